"""Benchmark: peak memory of Nested Diffusion through the pipeline adapter (`NestedPipeline`) against the diffusers
pipeline's own call, at the same NFEs, batch and image size. Prints figures; asserts nothing.

Pipelines: every class nestedlib drives, built from tiny random components of the real diffusers classes
(tests/tiny_pipelines.py), and the bundled diffusers pipelines mnist-dit, mnist-sd and mnist-flow.
For each, in a fresh process:
- diffusers: `pipe(prompts, num_inference_steps=outer * inner, ...)`, decoded to PIL images (its default);
- nested:    `NestedPipeline(pipe, outer, inner)(prompts, ...)`: outer x inner NFEs, every outer step's image
             decoded to PIL and kept (`NestedOutput.previews`), as a user of the adapter gets them.
mnist-flow is a DiTPipeline folder whose scheduler is FlowMatchEulerDiscreteScheduler, which lacks the
`scale_model_input` that DiTPipeline calls; its diffusers case runs a DiTPipeline of the same modules whose
scheduler has that one method added (the identity, as it is on a flow path), nothing else changed.

What is measured: the peak, during the call, of the bytes that torch's allocator holds for tensors allocated in
that call (weights, buffers and anything allocated before the call are not in it). On CPU it is read from
torch.profiler's memory events (profile_memory=True: every allocation and free of torch's CPU allocator, in order;
the peak of their running sum); on CUDA, torch.cuda.max_memory_allocated minus the allocation before the call.
Not counted: the Python heap and PIL images (a few kB here), and scratch memory that libraries such as oneDNN
allocate outside torch's allocator (the same network calls make the same scratch in both cases). Each call runs
once unprofiled first (lazy caches), and the two cases alternate their order over the repeats. "total" adds the
pipeline's parameters and buffers to each peak: what a GPU user sees in `torch.cuda.max_memory_allocated`.

    .venv/bin/python benchmarks/memory.py [--pipelines StableDiffusionXLPipeline mnist-dit] [--repeats 3]
        [--outer 5] [--inner 4] [--size 16] [--batch 16] [--device cpu] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["StableDiffusionPipeline", "StableDiffusionXLPipeline", "PixArtAlphaPipeline", "PixArtSigmaPipeline",
        "StableDiffusion3Pipeline", "FluxPipeline", "DiTPipeline"]
BUNDLED = ["mnist-dit", "mnist-sd", "mnist-flow"]
CASES = ("diffusers", "nested")


def _pipeline(name: str, device: str, batch: int, size: int):
    """The pipeline, its condition (prompts or labels), the keyword arguments both calls share, and extra
    keywords for the pipeline's own call."""
    import torch

    if name in TINY:
        sys.path.insert(0, str(ROOT / "tests"))
        import tiny_pipelines as tiny

        pipe = tiny.BUILDERS[name]().to(device)
        if name == "DiTPipeline":  # latents of the transformer's sample size; no height/width
            return pipe, [i % 10 for i in range(batch)], {}, {}
        prompts = [tiny.PROMPTS[i % len(tiny.PROMPTS)] for i in range(batch)]
        extra = {"use_resolution_binning": False} if name.startswith("PixArt") else {}  # bins only its real sizes
        return pipe, prompts, {"height": size, "width": size}, extra
    from nestedlib import models, prompts as digit_prompts

    pipe, info = models.load(name, device=device), models.info(name)
    pipe.set_progress_bar_config(disable=True)
    shared = {"guidance_scale": info.guidance}
    if name == "mnist-sd":
        return pipe, [digit_prompts.prompts_for(i % 10)[0] for i in range(batch)], shared, {}
    if name == "mnist-flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        class WithScaleModelInput(FlowMatchEulerDiscreteScheduler):
            def scale_model_input(self, sample, timestep=None):  # DiTPipeline calls it; on a flow path: identity
                return sample

        own = type(pipe)(transformer=pipe.transformer, vae=pipe.vae,  # the same modules: no second copy of weights
                         scheduler=WithScaleModelInput.from_config(pipe.scheduler.config))
        own.set_progress_bar_config(disable=True)
        return pipe, [i % 10 for i in range(batch)], shared, {"pipe": own}
    return pipe, [i % 10 for i in range(batch)], shared, {}


def _weights_bytes(pipe) -> int:
    import torch

    seen, total = set(), 0
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            for t in list(part.parameters()) + list(part.buffers()):
                if t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
    return total


class NetworkCalls:
    """Counts the network's forward calls and marks them: a profiler annotation "network call" around each (CPU),
    or on CUDA the allocator's peak reset at the first one, so that the sampling loop's own peak can be read."""

    def __init__(self, module, device: str):
        from torch.profiler import record_function

        self.count, self.device, self.open = 0, device, []
        module.register_forward_pre_hook(self._pre)
        module.register_forward_hook(self._post)
        self._record = record_function

    def _pre(self, *args):
        import torch

        self.count += 1
        if self.count == 1 and self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.loop_start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        self.open.append(self._record("network call"))
        self.open[-1].__enter__()

    def _post(self, *args):
        self.open.pop().__exit__(None, None, None)


def peak_bytes(fn, device: str, calls: NetworkCalls) -> dict:
    """Peaks of the bytes held by tensors that `fn()` allocates, above what was allocated before it (see the
    docstring): over the whole call ("call"), and from the network's first call on ("loop": the sampling loop and
    the decoding after it; what the text encoders allocated and still hold counts, their peak does not). On CPU
    also the sizes of the blocks live at the loop's peak, and the allocator's own running total there (a check)."""
    import collections
    import json
    import os
    import tempfile

    import torch

    calls.count = 0
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return {"call": torch.cuda.max_memory_allocated() - before,  # the reset at the first call: the loop's peak
                "loop": torch.cuda.max_memory_allocated() - before, "calls": calls.count}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as folder:  # the chrome trace carries each block's address
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)["traceEvents"]
    start = min(e["ts"] for e in trace if e.get("name") == "network call")
    memory = sorted((e for e in trace if e.get("name") == "[memory]"), key=lambda e: e["ts"])
    live = call = loop = 0
    blocks: dict = {}
    at_loop_peak: dict = {}
    total = None
    for e in memory:  # + bytes allocated, - bytes freed (frees of blocks allocated before the call are not reported)
        live += e["args"]["Bytes"]
        if e["args"]["Bytes"] > 0:
            blocks[e["args"]["Addr"]] = e["args"]["Bytes"]
        else:
            blocks.pop(e["args"]["Addr"], None)
        call = max(call, live)
        if e["ts"] >= start and live > loop:
            loop, at_loop_peak, total = live, dict(blocks), e["args"]["Total Allocated"]
    sizes = collections.Counter(at_loop_peak.values())
    return {"call": call, "loop": loop, "calls": calls.count, "allocator_total_at_loop_peak": total,
            "blocks_at_loop_peak": {str(k): v for k, v in sorted(sizes.items())}}


def one_process(name: str, device: str, outer: int, inner: int, size: int, batch: int, first: str) -> dict:
    """Both cases of one pipeline in this (fresh) process: warm-up calls, then each call profiled once."""
    import torch

    from nestedlib.nested_pipeline import NestedPipeline

    torch.set_num_threads(1)
    batch = batch if name in BUNDLED else 2
    pipe, cond, shared, extra = _pipeline(name, device, batch, size)
    calls = NetworkCalls(getattr(pipe, "unet", None) or pipe.transformer, device)
    g = lambda: torch.Generator(device).manual_seed(0)  # noqa: E731
    nested = NestedPipeline(pipe, outer=outer, inner=inner)
    own = extra.pop("pipe", pipe)  # the pipeline whose own call is measured (mnist-flow: with scale_model_input)
    run = {"diffusers": lambda: own(cond, num_inference_steps=outer * inner, generator=g(), **shared, **extra),
           "nested": lambda: nested(cond, generator=g(), **shared)}
    out = {"pipeline": name, "device": device, "batch": len(cond), "nfe": outer * inner,
           "weights_bytes": _weights_bytes(pipe)}
    warm = {case: run[case]() for case in CASES}  # warm-up: lazy allocations of the first call
    latents = warm["nested"].previews[-1].latents
    out["latent_bytes"] = latents.numel() * latents.element_size()  # one x_t of the batch
    for case in (CASES if first == CASES[0] else CASES[::-1]):
        out[case] = peak_bytes(run[case], device, calls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipelines", nargs="+", default=TINY + BUNDLED, choices=TINY + BUNDLED)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--outer", type=int, default=5)
    ap.add_argument("--inner", type=int, default=4)
    ap.add_argument("--size", type=int, default=16, help="image size of the tiny text pipelines (pixels)")
    ap.add_argument("--batch", type=int, default=16, help="images per call of the bundled models (tiny: 2 prompts)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--explain", action="store_true", help="list the blocks live at each loop peak that differ")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)  # internal: one process, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_process(args.one[0], args.device, args.outer, args.inner, args.size, args.batch,
                                     args.one[1])))
        return

    rows: list[dict] = []
    for r in range(args.repeats):
        for name in args.pipelines:
            first = CASES[r % 2]
            cmd = [sys.executable, __file__, "--one", name, first, "--device", args.device, "--outer",
                   str(args.outer), "--inner", str(args.inner), "--size", str(args.size), "--batch", str(args.batch)]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            x = rows[-1]
            print(f"repeat {r + 1}/{args.repeats} {name:>26}: call peak diffusers {x['diffusers']['call'] / 1e6:.3f} "
                  f"MB, nested {x['nested']['call'] / 1e6:.3f} MB; loop peak {x['diffusers']['loop'] / 1e6:.3f} / "
                  f"{x['nested']['loop'] / 1e6:.3f} MB", flush=True)

    print(f"\n{args.device}, {args.outer} outer x {args.inner} inner = {args.outer * args.inner} NFEs, {args.repeats} "
          "fresh processes per pipeline: median (min-max) of the peak MB of tensors allocated during the call")
    print(f"{'pipeline':>26} {'batch':>5} {'calls':>5} {'weights':>7} {'diffusers call':>20} {'nested call':>20} "
          f"{'x':>6} {'total x':>7} {'diffusers loop':>20} {'nested loop':>20} {'x':>6} {'extra':>6}")
    summary = {}
    for name in args.pipelines:
        mine = [x for x in rows if x["pipeline"] == name]
        med = {(c, k): statistics.median(x[c][k] for x in mine) for c in CASES for k in ("call", "loop")}
        span = {(c, k): (min(x[c][k] for x in mine), max(x[c][k] for x in mine)) for c in CASES for k in ("call", "loop")}
        w, latent = mine[0]["weights_bytes"], mine[0]["latent_bytes"]
        calls = {x[c]["calls"] for x in mine for c in CASES}
        s = {"batch": mine[0]["batch"], "weights_bytes": w, "latent_bytes": latent, "network_calls": sorted(calls),
             "median_bytes": {f"{c} {k}": v for (c, k), v in med.items()},
             "min_max_bytes": {f"{c} {k}": v for (c, k), v in span.items()},
             "call_ratio": med["nested", "call"] / med["diffusers", "call"],
             "total_ratio": (w + med["nested", "call"]) / (w + med["diffusers", "call"]),
             "loop_ratio": med["nested", "loop"] / med["diffusers", "loop"],
             "loop_extra_latents": (med["nested", "loop"] - med["diffusers", "loop"]) / latent}
        summary[name] = s
        cell = {key: f"{med[key] / 1e6:.3f} ({span[key][0] / 1e6:.3f}-{span[key][1] / 1e6:.3f})" for key in med}
        print(f"{name:>26} {s['batch']:>5} {'/'.join(map(str, sorted(calls))):>5} {w / 1e6:>7.2f} "
              f"{cell['diffusers', 'call']:>20} {cell['nested', 'call']:>20} {s['call_ratio']:>6.3f} "
              f"{s['total_ratio']:>7.3f} {cell['diffusers', 'loop']:>20} {cell['nested', 'loop']:>20} "
              f"{s['loop_ratio']:>6.3f} {s['loop_extra_latents']:>6.1f}")
    print("\ncalls: the network's forward calls per call (one per NFE); weights: MB of the pipeline's parameters and "
          "buffers; x: nested's peak over diffusers'; total x: the same with the weights added to both; loop: the "
          "peak from the network's first call on; extra: nested's loop peak minus diffusers', in latents x_t of the "
          "whole batch")
    if args.explain and args.device == "cpu":
        print("\nblocks live at the loop's peak (first repeat), by size in bytes: count in diffusers -> nested, where "
              "they differ")
        for name in args.pipelines:
            x = next(x for x in rows if x["pipeline"] == name)
            d, n = x["diffusers"]["blocks_at_loop_peak"], x["nested"]["blocks_at_loop_peak"]
            diff = [f"{int(k):,} B: {d.get(k, 0)} -> {n.get(k, 0)}" for k in sorted(set(d) | set(n), key=int)
                    if d.get(k, 0) != n.get(k, 0)]
            print(f"{name:>26} (latent {x['latent_bytes']:,} B): " + ("; ".join(diff) or "the same blocks"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
