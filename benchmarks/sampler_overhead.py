"""Benchmark: what the sampler costs on top of the network it calls. Prints figures; asserts nothing.

(a) overhead of `run(vanilla(...))` over a bare loop making the same network calls, as a ratio;
(b) wall time of Nested Diffusion (5 outer x 20 inner) over vanilla sampling at the same 100 NFEs.
Targets: (a) <= 1.02 (2 % overhead), (b) <= 1.02.

Wall-time ratios between separate runs drift with machine load, so each sampled run also times its own network
calls: "in-run" ratios (run time / time inside the network, in the same run) isolate the sampler's own cost.

    .venv/bin/python benchmarks/sampler_overhead.py [--batch 64] [--nfe 100] [--repeats 7]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from diffusers import UNet2DModel

from nestedlib import Network, Schedule, nested, run, timesteps, vanilla


def small_unet() -> UNet2DModel:
    """A small convolutional pixel UNet on 1x16x16 inputs (about 0.4 M parameters), seeded."""
    torch.manual_seed(0)  # only the initial weights; sampling below uses its own generators
    return UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--nfe", type=int, default=100)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model = small_unet()
    inside = [0.0]  # seconds spent inside the network, accumulated by the timed wrapper

    def fn(x, t, cond):
        start = time.perf_counter()
        out = model(x, t).sample
        inside[0] += time.perf_counter() - start
        return out

    schedule = Schedule.linear()
    network = Network(fn)
    x_T = torch.randn(args.batch, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    grid = timesteps(999, args.nfe)
    inner = args.nfe // args.outer

    def bare():
        x = x_T
        for t in grid:
            x = fn(x, torch.full((args.batch,), t), None)

    def van():
        run(vanilla(network, schedule, args.nfe, transition="ddpm"), x_T, generator=torch.Generator().manual_seed(0))

    def nest():
        run(nested(vanilla(network, schedule, inner, transition="ddpm"), args.outer), x_T, generator=torch.Generator().manual_seed(0))

    with torch.inference_mode():
        bare(), van(), nest()  # warm-up
        times = {"bare": [], "vanilla": [], "nested": []}
        in_run = {"vanilla": [], "nested": []}
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit all three alike
            for name, f in (("bare", bare), ("vanilla", van), ("nested", nest)):
                inside[0] = 0.0
                times[name].append(timed(f))
                if name in in_run:
                    in_run[name].append(times[name][-1] / inside[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    in_med = {k: statistics.median(v) for k, v in in_run.items()}
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "batch": args.batch, "nfe": args.nfe, "outer": args.outer, "inner": inner, "repeats": args.repeats,
        "seconds_median": med,
        "ms_per_network_call": 1000 * med["bare"] / args.nfe,
        "overhead_ratio_vanilla_over_bare": med["vanilla"] / med["bare"],
        "overhead_ratio_nested_over_bare": med["nested"] / med["bare"],
        "ratio_nested_over_vanilla": med["nested"] / med["vanilla"],
        "in_run_ratio_vanilla": in_med["vanilla"],
        "in_run_ratio_nested": in_med["nested"],
        "in_run_ratio_nested_over_vanilla": in_med["nested"] / in_med["vanilla"],
    }
    print(f"network call: {figures['ms_per_network_call']:.2f} ms at batch {args.batch}")
    for k in ("bare", "vanilla", "nested"):
        print(f"{k:>8}: median {med[k]:.3f} s over {args.repeats} runs of {args.nfe} NFEs")
    print(f"(a) sampler overhead, vanilla / bare loop: {figures['overhead_ratio_vanilla_over_bare']:.4f} (target <= 1.02)")
    print(f"    sampler overhead, nested / bare loop:  {figures['overhead_ratio_nested_over_bare']:.4f} (target <= 1.02)")
    print(f"(b) nested / vanilla at equal NFE:         {figures['ratio_nested_over_vanilla']:.4f} (target <= 1.02)")
    print("in-run ratios (run time / time inside the network, same run; insensitive to load drift):")
    print(f"(a) vanilla: {in_med['vanilla']:.4f}   nested: {in_med['nested']:.4f}   (target <= 1.02)")
    print(f"(b) nested / vanilla: {figures['in_run_ratio_nested_over_vanilla']:.4f}   (target <= 1.02)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
