"""The engine's speed choices, each measured on and off in the same run (CPU, float32).

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/engine_choices.py [--quick] [--only compile]

Trains the paper's models with ``rethink.train.engine.train`` on CIFAR-shaped synthetic data
(3x28x28, batch 128) and prints training samples per second for:

- the MLP training step: the fused step of ``rethink.train.fused_mlp`` (the engine's) against
  autograd with fused SGD, foreach SGD and the plain per-tensor loop;
- channels_last memory format for the convolutional models (model, or model and data) against
  the default layout;
- ``torch.compile`` (``--compile``) against eager, for the full-width models and for the ``cpu``
  scale's narrow Inception (width 0.125) on Fashion-MNIST-shaped (1x28x28) and CIFAR-shaped inputs,
  and its static graphs (the engine's) against dynamic shapes for epochs ending in a smaller batch;
- evaluation: the engine's batch size (``eval_batch``: 2048, 128 for convolutional models) under
  ``torch.inference_mode`` against other sizes and a conventional loop (128, ``no_grad``, ``.item()``);
- flushing denormal numbers to zero, on matrix products with denormal inputs.

Each variant runs in alternating rounds and keeps its best round.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F

from rethink.models import build
from rethink.train import engine
from rethink.train.engine import (
    TrainConfig,
    TrainData,
    channels_last,
    eval_batch,
    make_optimizer,
    speed_settings,
    train,
)

SHAPE = (3, 28, 28)
GROUPS = ("step", "layout", "compile", "evaluation", "denormals")  # --only


def data(n: int, channels_last: bool = False, shape: tuple = SHAPE) -> TrainData:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (n,), generator=g)
    return TrainData(x, y, x[:128], y[:128], y, torch.zeros(n, dtype=torch.bool))


def model(name: str, channels_last: bool = False, shape: tuple = SHAPE, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    m = build(name, shape, 10, **options)
    return m.to(memory_format=torch.channels_last) if channels_last else m


def samples_per_s(m, d: TrainData, steps: int, **cfg) -> float:
    res = train(m, d, TrainConfig(lr=0.01, lr_decay=1.0, epochs=1, max_steps=steps, stop_on_fit=False, **cfg))
    return steps * 128 / res.train_seconds


def best_of(variants: dict, rounds: int) -> dict:
    """Each variant (a function returning samples/s) in alternating rounds; the best of each."""
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, f in variants.items():
            best[name] = max(best[name], f())
    return best


def show(title: str, best: dict) -> None:
    base = next(iter(best.values()))
    print(f"{title}: " + ", ".join(f"{k} {v:,.0f} ({v / base:.2f}x)" for k, v in best.items()), flush=True)


def optimizers(name: str, steps: int, rounds: int) -> None:
    def with_sgd(kind):
        def make(m, cfg):
            opt = make_optimizer(m, cfg)
            for g in opt.param_groups:
                g["fused"], g["foreach"] = kind == "fused", kind == "foreach"
            return opt

        def run():
            engine.make_optimizer, engine.FUSED_MLP = make, False
            try:
                return samples_per_s(m, d, steps)
            finally:
                engine.make_optimizer, engine.FUSED_MLP = make_optimizer, True

        return run

    m, d = model(name), data(steps * 128)
    samples_per_s(m, d, 2)
    show(
        f"{name}, training step (samples/s)",
        best_of(
            {
                "fused MLP step": lambda: samples_per_s(m, d, steps),
                **{f"autograd + {k} SGD": with_sgd(k) for k in ("fused", "foreach", "for-loop")},
            },
            rounds,
        ),
    )


def memory_format(name: str, steps: int, rounds: int) -> None:
    plain, cl = (model(name), data(steps * 128)), (model(name, True), data(steps * 128))
    cl_data = (model(name, True), data(steps * 128, channels_last=True))

    def contiguous():  # the engine's own conversion switched off
        engine.channels_last = lambda m: False
        try:
            return samples_per_s(*plain, steps)
        finally:
            engine.channels_last = channels_last

    contiguous()
    for m, d in (cl, cl_data):
        samples_per_s(m, d, 1)
    show(
        f"{name}, memory format (samples/s)",
        best_of(
            {
                "contiguous": contiguous,
                "channels_last model (the engine's)": lambda: samples_per_s(*cl, steps),
                "channels_last model and data": lambda: samples_per_s(*cl_data, steps),
            },
            rounds,
        ),
    )


def compiled(name: str, steps: int, rounds: int, shape: tuple = SHAPE, **options) -> None:
    eager, comp = model(name, shape=shape, **options), model(name, shape=shape, **options)
    d = data(steps * 128, shape=shape)
    label = f"{name} {' '.join(f'{k} {v}' for k, v in options.items())} on {'x'.join(map(str, shape))}"
    samples_per_s(eager, d, 2)
    t = time.perf_counter()
    samples_per_s(comp, d, 2, compile=True)
    print(f"{label}: compiling took {time.perf_counter() - t:.0f} s")
    show(
        f"{label}, torch.compile (samples/s)",
        best_of(
            {
                "eager": lambda: samples_per_s(eager, d, steps),
                "compiled": lambda: samples_per_s(comp, d, steps, compile=True),
            },
            rounds,
        ),
    )


def static_graphs(steps: int, rounds: int, shape: tuple) -> None:
    """Epochs that end in a smaller batch (the cpu scale's Inception on 6,000 images: 46 batches of
    128, then 112), compiled as the engine compiles (``dynamic=False``: one static graph per batch
    size) against ``torch.compile``'s default, which recompiles for dynamic shapes at the second size."""
    d = data(steps * 128 - 16, shape=shape)  # the epoch's last batch has 112 images
    models = {dynamic: model("inception", shape=shape, width=0.125) for dynamic in (False, None)}
    real = torch.compile

    def run(dynamic, n):
        torch.compile = lambda m, **kw: real(m, dynamic=dynamic)
        try:
            return samples_per_s(models[dynamic], d, n, compile=True)
        finally:
            torch.compile = real

    for dynamic in models:  # compile both graphs of each before timing
        run(dynamic, steps)
    show(
        f"inception width 0.125 on {'x'.join(map(str, shape))}, epochs ending in a batch of 112, compiled (samples/s)",
        best_of(
            {
                "static graphs (the engine's)": lambda: run(False, steps),
                "dynamic shapes (torch.compile's default)": lambda: run(None, steps),
            },
            rounds,
        ),
    )


def evaluation(name: str, n: int, rounds: int) -> None:
    m, d = model(name, channels_last=name != "mlp1x512"), data(n)  # as the engine trains them

    def batches_of(size):
        def run():
            engine.eval_batch = lambda model: size
            try:
                t = time.perf_counter()
                engine.predict(m, d.x_train, d.y_train)
                return n / (time.perf_counter() - t)
            finally:
                engine.eval_batch = eval_batch

        return run

    @torch.no_grad()
    def conventional():
        m.eval()
        t = time.perf_counter()
        for i in range(0, n, 128):
            F.cross_entropy(m(d.x_train[i : i + 128]), d.y_train[i : i + 128]).item()
        m.train()
        return n / (time.perf_counter() - t)

    ours = eval_batch(m)
    show(
        f"{name}, evaluation (samples/s)",
        best_of(
            {
                f"ours: {ours} per batch, inference_mode": batches_of(ours),
                **{f"{size} per batch": batches_of(size) for size in (128, 512, 2048) if size != ours},
                "128 per batch, no_grad, .item()": conventional,
            },
            rounds,
        ),
    )


def denormals(rounds: int) -> None:
    a = torch.full((512, 512), 1e-39)  # below float32's smallest normal number (1.2e-38)
    b = torch.randn(512, 512)

    def products(flush):
        def run():
            torch.set_flush_denormal(flush)
            t = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b)
            return 5 / (time.perf_counter() - t)

        return run

    show(
        "512x512 products of a denormal and a normal matrix (per s)",
        best_of({"denormals flushed": products(True), "not flushed": products(False)}, rounds),
    )
    torch.set_flush_denormal(True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", choices=GROUPS, help="only this group of measurements")
    args = ap.parse_args(argv)
    rounds = 2 if args.quick else 3
    speed_settings()  # as the command line trains
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    run = {g: args.only in (None, g) for g in GROUPS}
    for name in ("mlp1x512", "mlp3x512") if run["step"] else ():
        optimizers(name, 30 if args.quick else 60, rounds)
    for name, steps in (("alexnet", 5), ("inception", 2), ("inception-nobn", 2)) if run["layout"] else ():
        memory_format(name, steps if args.quick else math.ceil(1.5 * steps), rounds)
    if run["compile"]:
        for name in ("mlp1x512", "alexnet"):
            compiled(name, 30 if name.startswith("mlp") else 5, rounds)
        for shape in ((1, 28, 28), SHAPE):  # the cpu scale's Inception (figure1b): compiling pays
            compiled("inception", 10 if args.quick else 20, rounds, shape=shape, width=0.125)
        static_graphs(10 if args.quick else 20, rounds, (1, 28, 28))
    if run["evaluation"]:
        evaluation("mlp1x512", 10000, rounds)
        evaluation("alexnet", 2048, rounds)
        evaluation("inception", 512, rounds)
    if run["denormals"]:
        denormals(rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
