"""Inception on a CUDA GPU: bf16 autocast against float32, side by side in one run.

    .venv/bin/python benchmarks/gpu_speed.py [--dataset cifar10 --data-dir DIR] [--train-size 5000]

1. Training samples per second of the paper's Inception on CIFAR-shaped synthetic data (3x28x28,
   batch 128), bf16 autocast (float32 weights, the engine's default on CUDA) against float32.
2. Time to fit random labels: Inception on a class-stratified subset of ``--dataset`` (default
   CIFAR-10, 5,000 images: about six minutes for the whole script on one recent GPU), lr 0.1,
   momentum 0.9, batch 128, constant rate, evaluated every epoch, until 100% training accuracy;
   bf16 against float32, same data and initialization.

Written for a GPU and not run on one yet (the machines this project was measured on have none);
``--device cpu`` runs the same code in float32 only, as a check that it works.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from rethink import api
from rethink.models import build
from rethink.spec import RunSpec
from rethink.train.engine import TrainConfig, TrainData, speed_settings, train


def throughput(device: torch.device, bf16: bool, steps: int) -> float:
    torch.manual_seed(0)
    model = build("inception", (3, 28, 28), 10).to(device)
    n = 128 * steps
    x, y = torch.randn(n, 3, 28, 28, device=device), torch.randint(0, 10, (n,), device=device)
    data = TrainData(x, y, x[:128], y[:128], y, torch.zeros(n, dtype=torch.bool, device=device))
    cfg = TrainConfig(lr=0.1, lr_decay=1.0, epochs=1, stop_on_fit=False, bf16=bf16)
    train(model, data, dataclasses.replace(cfg, max_steps=5))  # warm-up (cuDNN autotuning)
    return n / train(model, data, cfg).train_seconds


def time_to_fit(spec: RunSpec, device: torch.device, bf16: bool) -> dict:
    t = time.perf_counter()
    prepared = api.prepare(spec, device)
    model = api.build_model(spec, prepared.input_shape, prepared.num_classes).to(device)
    res = train(model, prepared.data, dataclasses.replace(api.train_config(spec), bf16=bf16))
    return {
        "status": res.status,
        "epochs": res.time_to_fit and res.time_to_fit["epochs"],
        "train_seconds": res.train_seconds,
        "wall_seconds": time.perf_counter() - t,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir")
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100, help="timed steps per throughput measurement")
    ap.add_argument("--epochs", type=int, default=300, help="budget of the time-to-fit runs")
    args = ap.parse_args(argv)
    device = api.resolve_device(args.device)
    api.set_deterministic(device)  # cuDNN autotuning unless RETHINK_DETERMINISTIC=1
    speed_settings()  # as the command line trains
    modes = [True, False] if device.type == "cuda" else [False]
    name = {True: "bf16 autocast", False: "float32"}
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    for bf16 in modes:
        print(
            f"Inception, synthetic 3x28x28, batch 128, {name[bf16]}: "
            f"{throughput(device, bf16, args.steps):,.0f} samples/s",
            flush=True,
        )
    spec = RunSpec(
        dataset=args.dataset,
        data_dir=args.data_dir,
        train_size=args.train_size,
        test_size=args.test_size,
        model="inception",
        randomize="random-labels",
        lr_decay=1.0,
        epochs=args.epochs,
        device=str(device),
    )
    for bf16 in modes:
        r = time_to_fit(spec, device, bf16)
        outcome = (
            f"fitted after {r['epochs']} epochs" if r["epochs"] else f"{r['status']} ({args.epochs} epochs, not fitted)"
        )
        print(
            f"time to fit random labels, {args.train_size:,} {args.dataset} images, {name[bf16]}: {outcome}, "
            f"{r['train_seconds']:.1f} s of training, {r['wall_seconds']:.0f} s wall",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
