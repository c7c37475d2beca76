#!/usr/bin/env python3
"""Times scipy.optimize.linear_sum_assignment on .npy cost matrices.

Usage: scipy_lsa.py [--repeats N] FILE.npy...
Prints one line per file: the median seconds of N solves, then the optimal total cost.
`emulsion bench assign` calls it on the matrices it solves, so both are timed in one run.
"""
import argparse
import statistics
import time

import numpy as np
from scipy.optimize import linear_sum_assignment


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    for path in args.files:
        costs = np.load(path)
        times = []
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            rows, cols = linear_sum_assignment(costs)
            times.append(time.perf_counter() - start)
        print(f"{statistics.median(times)!r} {float(costs[rows, cols].sum())!r}", flush=True)


if __name__ == "__main__":
    main()
