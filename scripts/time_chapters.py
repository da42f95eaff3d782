"""Time the book's chapters idle and beside competing CPU-bound processes, as a reader's busy laptop runs them.

    .venv/bin/python scripts/time_chapters.py [--load 1] [--jobs 2] [chapter ...]

Runs scripts/execute_chapters.py (the book build's execution: chapters side by side, one torch thread each) twice:
once on the machine as it is, once beside `--load` processes that each keep one core busy with float32 matrix
products. Prints each chapter's wall time and longest cell in both runs, their ratio, and the margin to the
per-cell limit of _config.yml. Writes both runs' cell times to --out (default _build/chapter-times-load.json).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def burn() -> None:
    """One core kept busy until killed: float32 matrix products on one thread (a reader's other program)."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while True:
        a = torch.tanh(a @ a)


def execute(names: list[str], jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        times = Path(tmp) / "times.json"
        cmd = [sys.executable, str(ROOT / "scripts" / "execute_chapters.py"), "--jobs", str(jobs),
               "--cache", str(Path(tmp) / "cache"), "--times", str(times), *names]
        proc = subprocess.run(cmd, cwd=ROOT, text=True, capture_output=True)
        print(proc.stdout, flush=True)
        if proc.returncode:
            raise SystemExit(f"execute_chapters failed:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
        return json.loads(times.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="chapter stems (default: all of _toc.yml)")
    ap.add_argument("--load", type=int, default=1, help="competing busy processes in the second run (default 1)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="chapters at once (default: CPU count)")
    ap.add_argument("--out", default=str(ROOT / "_build" / "chapter-times-load.json"))
    args = ap.parse_args(argv)
    limit = int(yaml.safe_load((ROOT / "_config.yml").read_text())["execute"]["timeout"])

    print(f"idle run ({args.jobs} chapters at a time; load average now {os.getloadavg()[0]:.1f})", flush=True)
    idle = execute(args.names, args.jobs)
    burners = [mp.Process(target=burn, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    try:
        print(f"loaded run: {args.load} competing busy process(es)", flush=True)
        loaded = execute(args.names, args.jobs)
    finally:
        for b in burners:
            b.kill()

    def longest(rec):
        return max((s for _, s in rec["cells"]), default=0.0)

    print(f"\n{'chapter':>16} {'idle s':>8} {'loaded s':>9} {'ratio':>6} {'longest cell idle':>18} "
          f"{'loaded':>7} {'margin to ' + str(limit) + ' s':>16}")
    for name, rec in idle["chapters"].items():
        lo = loaded["chapters"][name]
        print(f"{name:>16} {rec['seconds']:8.0f} {lo['seconds']:9.0f} {lo['seconds'] / rec['seconds']:6.2f} "
              f"{longest(rec):18.0f} {longest(lo):7.0f} {limit / max(longest(lo), 1e-9):15.1f}x")
    print(f"{'all (wall)':>16} {idle['wall_s']:8.0f} {loaded['wall_s']:9.0f} {loaded['wall_s'] / idle['wall_s']:6.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"load": args.load, "jobs": args.jobs, "idle": idle, "loaded": loaded}, indent=1))


if __name__ == "__main__":
    main()
