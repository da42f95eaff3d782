"""How torch's CPU thread count holds up when the machine is busy: the measurement behind runtime.set_threads.

    .venv/bin/python benchmarks/threads.py [--n 30] [--threads 1 2] [--load 0 1] [--repeats 3]

Times the paper's nested (5 x 20) and vanilla (100 NFEs) samplers of the bundled DiT on n samples, each in a fresh
process with a given torch thread count, on the machine as it is and beside `load` processes that each keep one core
busy (float32 matrix products on one thread). Prints the median wall time of each setting and its slowdown against
the same thread count idle. Nothing here is a test: the figures are for the reader and for choosing the policy.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from time_chapters import burn  # noqa: E402  (one core kept busy: the competing process of the book's timings)

CASE = r"""
import json, sys, time, torch
from nestedlib import run, sample_generators
from nestedlib.pipelines import paper_samplers, prepare
torch.set_num_threads(int(sys.argv[1])); n = int(sys.argv[2])
m = prepare("mnist-dit", cond=[i % 10 for i in range(n)], preset="paper")
out = {}
for name, proc in paper_samplers(m, 100, outer=5).items():
    x_T = m.noise(sample_generators(0, range(n)))
    start = time.perf_counter()
    run(proc, x_T, generator=sample_generators(0, range(n)))
    out[name] = time.perf_counter() - start
print(json.dumps(out))
"""


def one(threads: int, n: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", CASE, str(threads), str(n)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--load", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = {}
    for load in args.load:
        burners = [mp.Process(target=burn, daemon=True) for _ in range(load)]
        for b in burners:
            b.start()
        try:
            for threads in args.threads:
                runs = [one(threads, args.n) for _ in range(args.repeats)]
                rows[(load, threads)] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        finally:
            for b in burners:
                b.kill()
    samplers = list(next(iter(rows.values())))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, n = {args.n}, "
          f"median of {args.repeats} fresh processes (load average at the end {os.getloadavg()[0]:.1f})")
    print(f"{'busy processes':>15} {'threads':>8} " + " ".join(f"{s:>22}" for s in samplers))
    for (load, threads), r in rows.items():
        base = rows.get((0, threads))
        cells = [f"{r[s]:7.1f} s" + (f" ({r[s] / base[s]:4.1f}x idle)" if base and load else " " * 13) for s in samplers]
        print(f"{load:>15} {threads:>8} " + " ".join(f"{c:>22}" for c in cells))


if __name__ == "__main__":
    main()
