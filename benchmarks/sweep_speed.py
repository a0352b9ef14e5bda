"""A Figure 1b-style sweep, batched against one run after another, side by side in one run.

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/sweep_speed.py [--quick]

Eleven label-corruption levels (p = 0, 0.1, ..., 1) of an MLP on the digits set (1,437 training
images, 8x8), SGD lr 0.1 momentum 0.9 batch 128, constant rate, each run until 100% training
accuracy (evaluated every epoch), as ``rethink sweep`` runs them: once with the runs trained one
after another (``batch=False``) and once as the batching rule decides (all eleven in one batch),
each into a fresh store, wall time end to end. The two alternate in rounds (``--quick``: one
round, 500 training images) and each keeps its best round. Two MLPs:

- a digits-sized MLP, one hidden layer of 100 units (the shape of scikit-learn's default
  ``MLPClassifier``): the target, 3x or more;
- the paper's MLP 1x512 (sized for CIFAR-10), reported: its step (21 MFLOP) already keeps the
  2 cores busy on its own, so batching gains less.

Prints the ratios, whether the target is met, and how close the batched runs' steps to fit are to
the sequential ones'.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

from rethink import batching
from rethink.sweep import expand, run_sweep
from rethink.train.engine import speed_settings

TARGET = 3.0
ROUNDS = {False: 3, True: 1}


def sweep(specs, batch: bool) -> tuple[float, list]:
    batching._shared_key.cache_clear()  # each round looks at the model again, as a fresh command does
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        results = run_sweep(specs, os.path.join(tmp, "s.sqlite"), batch=batch, progress=False)
        return time.perf_counter() - t, results


def compare(name: str, model: dict, quick: bool) -> tuple[float, bool]:
    """The sweep of ``model`` both ways; its ratio and whether every run fitted."""
    base = {
        "dataset": "digits",
        **model,
        "randomize": "partial-labels",
        "lr": 0.1,
        "lr_decay": 1.0,
        "epochs": 1000,
        "device": "cpu",
        "train_size": 500 if quick else None,
    }
    specs = expand(base, [{"p": [round(0.1 * i, 1) for i in range(11)]}])
    print(
        f"\n{name}: {len(specs)} runs on digits ({base['train_size'] or 1437} training images), "
        "p = 0, 0.1, ..., 1, until 100% training accuracy",
        flush=True,
    )
    seq = bat = float("inf")
    for r in range(ROUNDS[quick]):
        s, seq_results = sweep(specs, batch=False)
        b, bat_results = sweep(specs, batch=True)
        seq, bat = min(seq, s), min(bat, b)
        print(f"  round {r + 1}: one after another {s:.1f} s, batched {b:.1f} s", flush=True)
    fitted = all(res.status == "fitted" for res in seq_results + bat_results)
    sizes = {res.summary["models_in_batch"] for res in bat_results}
    print(f"  batch sizes recorded: {sorted(sizes)}; every run fitted: {fitted}")
    print(
        "  steps to fit, one after another / batched: "
        + ", ".join(
            f"p={a.spec.p:g}: {a.time_to_fit['steps']}/{b.time_to_fit['steps']}"
            for a, b in zip(seq_results, bat_results)
            if a.time_to_fit and b.time_to_fit
        )
    )
    print(f"  one after another {seq:.1f} s, batched {bat:.1f} s: {seq / bat:.2f}x", flush=True)
    return seq / bat, fitted


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="500 training images, one round")
    args = ap.parse_args(argv)
    speed_settings()  # as the command line trains
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    small, fitted = compare("digits-sized MLP 1x100", {"model": "mlp", "hidden": (100,)}, args.quick)
    paper, _ = compare("the paper's MLP 1x512", {"model": "mlp1x512"}, args.quick)
    print(
        f"\n| model | batched / one after another |\n|---|---|\n| MLP 1x100 | {small:.2f}x |\n"
        f"| MLP 1x512 | {paper:.2f}x |"
    )
    met = fitted and small >= TARGET
    print(
        f"  [{'met' if met else 'NOT met'}] digits-sized MLP sweep batched {TARGET:g}x faster than one run after "
        "another"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
