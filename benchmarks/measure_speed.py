"""How long the generalization measures take on one MLP 1x512 run over 10,000 training images, and
the correlation over 100 runs, each beside one training epoch of the same run measured in this run.

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/measure_speed.py [--n 10000] [--epochs 5]

Trains the run (Fashion-MNIST when Debian's dataset-fashion-mnist is installed, else the embedded
digits) into a temporary store, then times each family of measures on its whole training set with
a fresh context (so no family reuses another's forward pass), all of them together as
'rethink measure' computes them, and :func:`rethink.measures.correlate.correlate_runs` over 100
synthetic runs (5 corruption levels x 5 widths x 2 weight decays x 2 seeds, 28 measures). Prints a
table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

import rethink
from rethink.measures import MEASURES, compute
from rethink.measures.correlate import correlate_runs
from rethink.measures.stored import trained_run
from rethink.store import Store

FAMILIES = {
    "norms": [
        n for n in MEASURES.names() if n.startswith(("spectral_", "frobenius_", "param", "path_")) or n == "params"
    ],
    "margins": ["margin", "margins", "spectral_complexity", "normalized_margins"],
    "sigma bisection (pacbayes_sigma)": ["pacbayes_sigma"],
    "magnitude-aware sigma bisection": ["pacbayes_mag_sigma"],
    "sharpness (both)": ["sharpness", "sharpness_mag"],
    "all (as 'rethink measure')": None,
}


def train(n: int, epochs: int, folder: str):
    dataset = "fashion-mnist" if os.path.isdir("/usr/share/datasets/fashion-mnist") else "digits"
    spec = rethink.RunSpec(
        dataset=dataset, model="mlp1x512", train_size=n, test_size=1000, epochs=epochs, stop_on_fit=False, lr_decay=1.0
    )
    result = rethink.run(spec, os.path.join(folder, "s.sqlite"))
    return result, result.summary["train_seconds"] / epochs


def synthetic_correlation(seconds: list) -> None:
    rng = np.random.default_rng(0)
    runs, values = [], {}
    for i, (p, w, wd, seed) in enumerate(
        (p, w, wd, s) for p in (0, 0.25, 0.5, 0.75, 1) for w in (0.25, 0.5, 1, 2, 4) for wd in (0, 5e-4) for s in (0, 1)
    ):
        rid = f"run{i:03d}"
        runs.append(
            {
                "run_id": rid,
                "spec": {"p": p, "width": w, "weight_decay": wd, "seed": seed},
                "summary": {"train_acc": 1.0, "test_acc": 0.9 - 0.7 * p + 0.01 * rng.standard_normal()},
            }
        )
        values[rid] = {f"measure{k}": float(rng.standard_normal()) for k in range(28)}
    t0 = time.perf_counter()
    result = correlate_runs(runs, values)
    seconds.append(time.perf_counter() - t0)
    assert result["runs"] == 100 and len(result["measures"]) == 28


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="training images")
    ap.add_argument("--epochs", type=int, default=5, help="training epochs before measuring")
    args = ap.parse_args()
    rethink.speed_settings()
    with tempfile.TemporaryDirectory() as folder:
        result, epoch = train(args.n, args.epochs, folder)
        _, model, init, prepared = trained_run(Store(os.path.join(folder, "s.sqlite")), result.run_id)
    x, y = prepared.data.x_train, prepared.data.y_train
    rows = {}
    for family, names in FAMILIES.items():
        t0 = time.perf_counter()
        compute(model, x, y, init=init, measures=names)
        rows[family] = time.perf_counter() - t0
    corr: list = []
    synthetic_correlation(corr)
    rows["correlation over 100 runs, 28 measures"] = corr[0]
    print(
        f"MLP 1x512 on {len(x)} {result.spec.dataset} images, trained {args.epochs} epochs: "
        f"{100 * result.train_acc:.1f}% train; one training epoch {epoch:.2f} s"
    )
    print(f"{'what':45s} {'seconds':>9s} {'x one epoch':>12s}")
    for what, seconds in rows.items():
        print(f"{what:45s} {seconds:9.2f} {seconds / epoch:12.2f}")
    print(json.dumps({"n": len(x), "dataset": result.spec.dataset, "epoch_seconds": epoch, "seconds": rows}))


if __name__ == "__main__":
    main()
