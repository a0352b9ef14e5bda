"""Two runs at once on one machine: each taking every core, against each given its share (--threads).

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/threads_share.py [--steps N] [--rounds R]

The same `rethink run` (MLP 1x512 on the digits set, random labels, a fixed budget of ``--steps``
steps, no checkpoints) is started three ways, side by side in one run, each in fresh stores:
alone with every core; two copies at once, each with every core (torch's default); and two copies
at once, each with ``--threads`` = cores / 2. Prints each copy's training seconds (the run's own
stopwatch), the slowdown of each two-at-once way against the run alone, and whether the
oversubscription warning was printed. Each way keeps its best of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

RUN = [
    "-m",
    "rethink",
    "run",
    "--dataset",
    "digits",
    "--model",
    "mlp1x512",
    "--randomize",
    "random-labels",
    "--lr-decay",
    "1",
    "--no-stop-on-fit",
    "--checkpoint-interval",
    "0",
    "--json",
    "--quiet",
]


def together(copies: int, steps: int, threads: int | None) -> tuple[list[float], bool]:
    """Start ``copies`` runs at once; their training seconds, and whether any warned."""
    flags = ["--max-steps", str(steps), "--epochs", "100000"] + (["--threads", str(threads)] if threads else [])
    with tempfile.TemporaryDirectory() as tmp:
        procs = [
            subprocess.Popen(
                [sys.executable, *RUN, *flags, "--store", os.path.join(tmp, f"{i}.sqlite")],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for i in range(copies)
        ]
        outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        sys.exit(f"a run failed: {[err for _, err in outs]}")
    return (
        [json.loads(out)["train_seconds"] for out, _ in outs],
        any("other rethink process" in err for _, err in outs),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    share = max(1, cores // 2)
    best: dict[str, tuple[float, list[float], bool]] = {}
    for r in range(args.rounds):
        for name, copies, threads in (
            ("alone", 1, None),
            ("two, every core each", 2, None),
            (f"two, --threads {share} each", 2, share),
        ):
            secs, warned = together(copies, args.steps, threads)
            print(
                f"round {r + 1}: {name}: {', '.join(f'{s:.1f}' for s in secs)} s of training"
                + (" (warned)" if warned else ""),
                flush=True,
            )
            if name not in best or max(secs) < best[name][0]:
                best[name] = (max(secs), secs, warned)
    alone = best["alone"][0]
    print(f"\n{cores} cores, {args.steps} steps of MLP 1x512 on digits; best of {args.rounds} rounds")
    print("| way | training seconds (slowest copy) | slowdown against alone | warned |")
    print("|---|---:|---:|---|")
    for name, (slowest, _, warned) in best.items():
        print(f"| {name} | {slowest:.1f} | {slowest / alone:.2f}x | {'yes' if warned else 'no'} |")


if __name__ == "__main__":
    main()
