"""Construction time of Theorem 1's network on Fashion-MNIST (d = 784), n = 1,000 .. 60,000.

    flock /tmp/rethink-cpu.lock .venv/bin/python benchmarks/construct_bench.py [--sizes 1000,...] [--repeats 3]

For each n (a stratified subset of the training set with random labels): the best of --repeats
construction times (float32 pixels in, network out: grid check, projection, sort, tie check, the
linear-time solve), that time per n log2 n relative to the smallest n (near 1 means n log n
growth; the O(n d) projection makes it fall slowly), and the growth exponent between consecutive
sizes (1 for linear growth). ``rethink construct`` verifies the network; this only times it.
"""

from __future__ import annotations

import argparse
import math

from rethink.data import load_dataset, subset
from rethink.data.randomize import randomize
from rethink.seeding import generator
from rethink.theory import construct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,2000,5000,10000,20000,30000,60000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    ds = load_dataset("fashion-mnist")
    r = randomize(
        "random-labels", ds.x_train, ds.y_train, ds.x_test, ds.y_test, ds.num_classes, generator(0, "randomize")
    )
    ds = ds.replace(y_train=r.y_train)
    print(f"{'n':>7}  {'seconds':>8}  {'per n log n (rel.)':>18}  {'exponent':>8}")
    rows = []
    for n in sizes:
        part = subset(ds, n, None, generator(0, "subset"))
        x, y = part.x_train, part.y_train
        seconds = min(construct(x, y).construction.seconds for _ in range(args.repeats))
        rows.append((n, seconds))
        per = seconds / (n * math.log2(n))
        base = rows[0][1] / (rows[0][0] * math.log2(rows[0][0]))
        exponent = "" if len(rows) == 1 else f"{math.log(seconds / rows[-2][1]) / math.log(n / rows[-2][0]):.2f}"
        print(f"{n:>7}  {seconds:>8.3f}  {per / base:>18.2f}  {exponent:>8}", flush=True)
    c = construct(x, y).construction
    print(
        f"n = {n}: {c.num_params:,} weights, smallest gap {c.min_gap_relative:.3g} of the range, exact "
        f"projections: {c.exact_projection}, condition {c.condition:.3g}"
    )


if __name__ == "__main__":
    main()
