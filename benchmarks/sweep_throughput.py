"""Benchmark: image-NFEs per second of scripts/sweep.py's sampling phase against the bare network; prints figures.

Target (issue 8): the sweep's sampling throughput is at least 90 % of the bare network's, summed over the processes.

* bare: the guided DiT forward (`model.network(x, t)`, conditional and unconditional branches as one batch, one
  NFE) on a micro-batch of the sweep's size, in K processes at once (torchrun, a barrier before the timed loop),
  with the same threads per process as the sweep; no sampler, no decoder.
* sweep: `scripts/sweep.py` on one Table-1 budget, in 1 and K processes; its results.json holds each rank's time in
  the sampler (`sampling_s`, the network included) and in decoding the previews the table needs (`decode_s`). The
  sampling phase ends when its slowest rank does: throughput = image-NFEs / max over ranks of (sampling + decode).
  The same figure without the decodes, and the end-to-end rate (imports and metrics included), are printed too.

Wall-time figures on a shared machine move with the other users' load: read them as a ratio measured minutes apart.

    PYTHONPATH=. .venv/bin/python benchmarks/sweep_throughput.py [--budget 100] [--n 50] [--batch 25] [--procs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "scripts" / "sweep.py"


def bare_worker(args) -> None:
    """One process of the bare measurement: image-NFEs per second of the guided network alone."""
    sys.path.insert(0, str(ROOT))
    import torch
    import torch.distributed as dist

    from nestedlib import models
    from nestedlib.pipelines import dit_model

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    model = dit_model(models.load("mnist-dit"), [i % 10 for i in range(args.batch)], args.guidance)
    x = torch.randn(model.shape, generator=torch.Generator().manual_seed(0))
    grid = list(range(999, 0, -1000 // args.calls))[: args.calls]
    with torch.inference_mode():
        for t in grid[:3]:
            model.network(x, t)  # warm-up
        if distributed:
            dist.barrier()  # the timed loops of all ranks overlap
        start = time.perf_counter()
        for t in grid:
            model.network(x, t)
        seconds = time.perf_counter() - start
    rate = len(grid) * args.batch / seconds
    rates = [None] * int(os.environ.get("WORLD_SIZE", "1"))
    if distributed:
        dist.all_gather_object(rates, rate)
        dist.destroy_process_group()
    else:
        rates = [rate]
    if int(os.environ.get("RANK", "0")) == 0:
        print("BARE " + json.dumps({"rates": rates, "threads": torch.get_num_threads()}))


def launch(procs: int, script: list[str]) -> list[str]:
    """The command line of `script` in `procs` processes (torchrun when more than one)."""
    if procs == 1:
        return [sys.executable, *script]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
    return [*torchrun, "--", *script]


def env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def bare(procs: int, threads: int, args) -> dict:
    cmd = launch(procs, [__file__, "--bare-worker", "--batch", str(args.batch), "--calls", str(args.calls),
                         "--guidance", str(args.guidance)])
    out = subprocess.run(cmd, cwd=ROOT, env=env(threads), capture_output=True, text=True)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("BARE ")]
    if out.returncode or not line:
        raise RuntimeError(f"bare run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    figures = json.loads(line[-1][5:])
    return {"image_nfe_per_s": sum(figures["rates"]), "per_process": figures["rates"], "threads": figures["threads"]}


def sweep(procs: int, threads: int, args, folder: Path) -> dict:
    out = folder / f"p{procs}t{threads}"
    cmd = launch(procs, [str(SWEEP), "--budgets", str(args.budget), "--samples", str(args.n), "--batch", str(args.batch),
                         "--seeds", "0", "--guidance", str(args.guidance), "--out", str(out)])
    start = time.perf_counter()
    run = subprocess.run(cmd, cwd=ROOT, env=env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if run.returncode:
        raise RuntimeError(f"sweep failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    res = json.loads((out / "results.json").read_text())["results"]
    t, nfe = res["time"], res["image_nfe"]
    phase = max(s + d for s, d in zip(t["sampling_s"], t["decode_s"]))
    return {"image_nfe": nfe, "image_nfe_per_s": nfe / phase,
            "image_nfe_per_s_without_decode": nfe / max(t["sampling_s"]),
            "image_nfe_per_s_end_to_end": nfe / wall, "sampling_s": t["sampling_s"], "decode_s": t["decode_s"],
            "metrics_s": t["metrics_s"], "wall_s": wall, "decoded_images": res["decoded_images"],
            "rows": res["rows"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=100, help="total NFEs of the sweep (default 100)")
    ap.add_argument("--n", type=int, default=50, help="samples (default 50)")
    ap.add_argument("--batch", type=int, default=25, help="micro-batch of the sweep and of the bare network")
    ap.add_argument("--procs", type=int, default=2, help="K, compared with one process (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads per process (default 1, torchrun's)")
    ap.add_argument("--guidance", type=float, default=1.5)
    ap.add_argument("--calls", type=int, default=40, help="timed network calls of the bare loop")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--bare-worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.bare_worker:
        return bare_worker(args)

    figures = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
               "budget": args.budget, "n": args.n, "batch": args.batch, "threads_per_process": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        for procs in sorted({1, args.procs}):  # bare and sweep back to back, so both see about the same load
            b = bare(procs, args.threads, args)
            s = sweep(procs, args.threads, args, Path(tmp))
            figures[f"{procs}_processes"] = {"bare": b, "sweep": {k: v for k, v in s.items() if k != "rows"}}
            figures[f"{procs}_processes"]["ratio"] = s["image_nfe_per_s"] / b["image_nfe_per_s"]
            figures[f"{procs}_processes"]["ratio_without_decode"] = (s["image_nfe_per_s_without_decode"]
                                                                     / b["image_nfe_per_s"])
            figures.setdefault("rows", {})[procs] = s["rows"]
    rows = figures.pop("rows")
    figures["identical_rows_1_vs_k"] = rows[1] == rows[args.procs]

    print(f"{figures['machine']}; budget {args.budget} NFEs x 2 samplers x {args.n} samples, micro-batch "
          f"{args.batch}, {args.threads} thread(s) per process")
    print(f"{'processes':>9}  {'bare img-NFE/s':>14}  {'sweep img-NFE/s':>15}  {'ratio':>6}  "
          f"{'w/o decode':>10}  {'end-to-end':>10}")
    for procs in sorted({1, args.procs}):
        f = figures[f"{procs}_processes"]
        print(f"{procs:>9}  {f['bare']['image_nfe_per_s']:14.1f}  {f['sweep']['image_nfe_per_s']:15.1f}  "
              f"{f['ratio']:6.3f}  {f['ratio_without_decode']:10.3f}  "
              f"{f['sweep']['image_nfe_per_s_end_to_end']:10.1f}")
    if args.procs != 1:
        one, k = figures["1_processes"], figures[f"{args.procs}_processes"]
        gain = {x: k[x]["image_nfe_per_s"] / one[x]["image_nfe_per_s"] for x in ("bare", "sweep")}
        print(f"scaling 1 -> {args.procs} processes: bare x{gain['bare']:.2f}, sweep x{gain['sweep']:.2f}; "
              f"results.json rows identical: {figures['identical_rows_1_vs_k']}")
    print("target: ratio >= 0.90 (sweep sampling phase, preview decodes included, over the bare network)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
