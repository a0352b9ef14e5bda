"""What --track-examples costs: time per evaluation and store size, MLP 1x512 on 10,000 images.

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/tracking_cost.py [--n 10000] [--epochs 10] [--rounds 2]

Trains the same spec (Fashion-MNIST when Debian's dataset-fashion-mnist is installed, else digits;
random labels, constant rate, evaluated every epoch) with and without tracking, alternating, each
into its own temporary store; prints each run's seconds per evaluation (the loop's evaluation
stopwatch over the number of evaluations), the ratio tracked / untracked per round, and the bytes
the records take per 100 evaluations. One JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import rethink
from rethink.store import Store


def one(n: int, epochs: int, track: bool, folder: str) -> tuple[float, int, int]:
    dataset = "fashion-mnist" if os.path.isdir("/usr/share/datasets/fashion-mnist") else "digits"
    spec = rethink.RunSpec(
        dataset=dataset,
        train_size=n,
        test_size=1000,
        model="mlp1x512",
        randomize="random-labels",
        lr_decay=1.0,
        epochs=epochs,
        stop_on_fit=False,
        track_examples=track,
    )
    path = os.path.join(folder, f"{track}.sqlite")
    result = rethink.run(spec, path, force=True)
    evals = len(result.evals)
    stored = Store(path, readonly=True).examples_bytes().get(result.run_id, 0)
    return result.summary["eval_seconds"] / evals, evals, stored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="training images")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rethink.speed_settings()
    rounds = []
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            plain, evals, _ = one(args.n, args.epochs, False, folder)
            tracked, _, stored = one(args.n, args.epochs, True, folder)
            rounds.append({"plain_s": plain, "tracked_s": tracked, "ratio": tracked / plain, "evals": evals})
            print(
                f"round {r + 1}: {evals} evaluations of {args.n} training + 1000 test images: "
                f"{1000 * plain:.1f} ms untracked, {1000 * tracked:.1f} ms tracked per evaluation: "
                f"x{tracked / plain:.3f}; records {stored / 1024:.1f} KiB, "
                f"{stored / evals * 100 / 1e6:.3f} MB per 100 evaluations"
            )
    print(json.dumps({"n": args.n, "rounds": rounds, "bytes_per_100_evals": stored / evals * 100}))


if __name__ == "__main__":
    main()
