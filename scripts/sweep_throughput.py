"""Throughput of one Table 1 micro-batch (nestedlib.sweep.sample_batch: vanilla and nested, paper preset) against the
bare network on the same device, with the per-sample noise drawn row by row or ahead (PrefetchedStreams).

    python scripts/sweep_throughput.py --model mnist-dit --device cuda --batch 250 1000 --budget 100

Prints one JSON line per (batch, noise): image-NFEs per second of the sweep and of the bare network (the same number
of network calls on the same batch, no sampler, no noise), and their ratio. Samples drawn ahead are checked to equal
those drawn row by row.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nestedlib import models  # noqa: E402
from nestedlib.pipelines import prepare  # noqa: E402
from nestedlib.runtime import set_threads  # noqa: E402
from nestedlib.sweep import sample_batch  # noqa: E402


def sync(device: str) -> None:
    """Wait for the device's queued work (timings of asynchronous GPU calls)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist-dit")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[250, 1000])
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    set_threads(args.threads)
    classes = models.info(args.model).classes
    for batch in args.batch:
        model = prepare(args.model, cond=[i % classes for i in range(batch)], device=args.device, preset="paper")
        x = model.noise(torch.Generator().manual_seed(0))
        t = torch.full((batch,), 500, device=args.device)
        calls = 2 * args.budget  # vanilla and nested each spend the budget
        with torch.inference_mode():
            for _ in range(3):
                model.network(x, 500)
            sync(args.device)
            t0 = time.perf_counter()
            for _ in range(calls):
                model.network(x, 500)
            sync(args.device)
            bare = time.perf_counter() - t0
        del t
        results = {}
        for ahead in (False, True):
            sample_batch(model, args.budget, 0, range(batch), prefetch=ahead)  # warm-up
            sync(args.device)
            t0 = time.perf_counter()
            results[ahead] = sample_batch(model, args.budget, 0, range(batch), prefetch=ahead)
            sync(args.device)
            wall = time.perf_counter() - t0
            print(json.dumps({"model": args.model, "device": args.device, "batch": batch, "budget": args.budget,
                              "noise": "ahead" if ahead else "row by row",
                              "sweep_image_nfe_per_s": round(calls * batch / wall),
                              "bare_network_image_nfe_per_s": round(calls * batch / bare),
                              "sweep_over_bare": round(bare / wall, 3)}), flush=True)
        same = all(torch.equal(results[False][k].x0, results[True][k].x0) for k in ("vanilla", "nested"))
        print(json.dumps({"batch": batch, "ahead_equals_row_by_row": same}), flush=True)


if __name__ == "__main__":
    main()
