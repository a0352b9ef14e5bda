"""Where training models as one batch pays: the measurements behind ``rethink.batching``'s rule.

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/batch_rule.py [--models 8] [--steps 60] [--only Inception]

For models whose training step needs from about a million to a few billion FLOPs (MLPs of several
widths on 8x8 and 28x28x3 inputs, narrow Inception and AlexNet), trains K models one after
another with the engine and K models as one batch with the batched engine, on synthetic data, and
prints the training time per model and step of each and their ratio, next to each step's FLOPs
(``rethink.train.flops.step_flops``) and whether the rule (``MAX_STEP_FLOPS``) batches it.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rethink.batching import MAX_STEP_FLOPS
from rethink.models import build
from rethink.train.batched import Member, train_batched
from rethink.train.engine import TrainConfig, TrainData, speed_settings, train
from rethink.train.flops import step_flops

CASES = [  # (label, model, options, input shape)
    ("MLP 1x64, 8x8", "mlp", {"hidden": (64,)}, (1, 8, 8)),
    ("MLP 1x512, 8x8", "mlp", {"hidden": (512,)}, (1, 8, 8)),
    ("MLP 1x2048, 8x8", "mlp", {"hidden": (2048,)}, (1, 8, 8)),
    ("MLP 3x512, 8x8", "mlp", {"hidden": (512, 512, 512)}, (1, 8, 8)),
    ("MLP 1x128, 28x28x3", "mlp", {"hidden": (128,)}, (3, 28, 28)),
    ("MLP 1x512, 28x28x3", "mlp", {"hidden": (512,)}, (3, 28, 28)),
    ("Inception w0.0625, 8x8", "inception", {"width": 0.0625}, (1, 8, 8)),
    ("AlexNet w0.125, 8x8", "alexnet", {"width": 0.125}, (1, 8, 8)),
    ("Inception w0.125, 28x28x1", "inception", {"width": 0.125}, (1, 28, 28)),  # the cpu scale's Inception
    ("AlexNet w0.25, 28x28x1", "alexnet", {"width": 0.25}, (1, 28, 28)),  # the cpu scale's AlexNet
]


def data(shape, n: int, seed: int) -> TrainData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return TrainData(x, y, x[:256], y[:256], y, torch.zeros(n, dtype=torch.bool))


def model(name, options, shape, seed):
    torch.manual_seed(seed)
    return build(name, shape, 10, **options)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=8, help="models per batch (K)")
    ap.add_argument("--steps", type=int, default=60, help="training steps per model")
    ap.add_argument("--only", default="", help="only the cases whose label contains this text, e.g. Inception")
    args = ap.parse_args(argv)
    k, steps = args.models, args.steps
    speed_settings()  # as the command line trains
    cfg = TrainConfig(lr=0.01, lr_decay=1.0, epochs=1000, max_steps=steps, eval_every=10**9, stop_on_fit=False)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; K = {k} models, {steps} steps each, batch 128; "
        f"rule: batched up to {MAX_STEP_FLOPS['cpu'] / 1e6:.0f} MFLOP per step on CPU\n"
    )
    print("| model | MFLOP per step | alone (ms per model-step) | batched (ms per model-step) | speedup | rule |")
    print("|---|---|---|---|---|---|")
    for label, name, options, shape in CASES:
        if args.only not in label:
            continue
        n = 128 * steps
        flops = step_flops(model(name, options, shape, 0), shape, 128)
        alone = batched = float("inf")
        for _ in range(2):  # the better of two rounds each
            alone = min(
                alone,
                sum(train(model(name, options, shape, s), data(shape, n, s), cfg).train_seconds for s in range(k)),
            )
            members = [Member(model(name, options, shape, s), data(shape, n, s), cfg) for s in range(k)]
            batched = min(batched, max(r.train_seconds for r in train_batched(members)))
        per = 1e3 / (k * steps)
        print(
            f"| {label} | {flops / 1e6:,.1f} | {alone * per:.3f} | {batched * per:.3f} | {alone / batched:.2f}x | "
            f"{'batched' if flops <= MAX_STEP_FLOPS['cpu'] else 'alone'} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
