"""Benchmark: nested and vanilla sampling through the bundled DiT, text and rectified-flow models, against the bare
network calls and against diffusers' own sampler at equal NFE, with peak memory. Prints figures; asserts nothing.

Each case runs in a fresh process (so peak memory is its own), called the way a user calls the public API: outside
any `torch.no_grad()`. The cases alternate (A B C D A B C D ...) so that load drift hits all of them alike.

- bare:     the network's forward passes alone, as many as the run makes (guided: one batched call per NFE);
- vanilla:  `run(paper_samplers(model, nfe)["vanilla"], ...)` (DiT: DDPM with learned variance; text: DDIM);
- nested:   `run(paper_samplers(model, nfe)["nested"], ...)` (DiT: 5 outer x nfe/5 inner; text: 25 x nfe/25);
- diffusers: `DiTPipeline(...)` / `StableDiffusionPipeline(..., output_type="latent")` with nfe steps; for the flow
  DiT (DiTPipeline calls scale_model_input, which FlowMatchEulerDiscreteScheduler lacks) DiTPipeline's own loop
  written out around FlowMatchEulerDiscreteScheduler.step (vanilla: Euler; nested: 5 outer x nfe/5 inner Euler).
DiT and flow cases all end with one VAE decode of the batch (DiTPipeline always decodes); text cases decode nothing.
Targets (issue "Sampling records autograd graphs"): time <= 1.02 x bare and <= 1.02 x diffusers; peak memory
<= 1.2 x diffusers.

    .venv/bin/python benchmarks/real_paths.py [--models dit sd] [--repeats 5] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SETTINGS = {"dit": dict(name="mnist-dit", batch=64, nfe=100), "sd": dict(name="mnist-sd", batch=16, nfe=100),
            "flow": dict(name="mnist-flow", batch=64, nfe=100)}
CASES = ("bare", "vanilla", "nested", "diffusers")


def rss_gb() -> float:
    """Resident memory of this process now, in GB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def one_case(model_key: str, case: str, threads: int) -> dict:
    """Time one sampling run of `case` in this (fresh) process after one warm-up run; report peak memory."""
    import torch

    from nestedlib import models, prompts, run
    from nestedlib.pipelines import dit_model, flow_dit_model, paper_samplers, sd_model

    torch.set_num_threads(threads)
    cfg = SETTINGS[model_key]
    n, nfe, scale = cfg["batch"], cfg["nfe"], models.info(cfg["name"]).guidance
    pipe = models.load(cfg["name"])  # one copy of the weights, shared by our wrapper and diffusers' pipeline
    if model_key == "dit":
        cond = [i % 10 for i in range(n)]
        model, module = dit_model(pipe, cond, scale), pipe.transformer
    elif model_key == "flow":
        cond = [i % 10 for i in range(n)]
        model, module = flow_dit_model(pipe, cond, scale, classes=10), pipe.transformer
    else:
        cond = [prompts.prompts_for(i % 10)[0] for i in range(n)]
        model, module = sd_model(pipe, cond, scale), pipe.unet
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    if case in ("vanilla", "nested"):
        sampler = paper_samplers(model, nfe)[case]

        def go():  # the public API, outside any no_grad
            x0 = run(sampler, model.noise(g()), generator=g()).x0
            return model.decode(x0) if model_key in ("dit", "flow") else x0
    elif case == "bare":
        net, x = model.network, model.noise(g())
        tt = (torch.full((2 * n,), 0.5, dtype=torch.float64) if model_key == "flow"
              else torch.full((2 * n,), 500, dtype=torch.long))
        both, conds = torch.cat([x, x]), torch.cat([net.cond, net.null_cond])

        def go():
            with torch.no_grad():  # the floor: nothing but the forward passes, one guided batch per NFE
                for _ in range(nfe):
                    out = net.fn(both, tt, conds)
                return model.decode(out[:n, :4]) if model_key in ("dit", "flow") else out
    elif model_key == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        labels = torch.tensor(cond + [1000] * n)

        def go():  # DiTPipeline's loop on FlowMatchEulerDiscreteScheduler (its own step), guided on every channel
            with torch.no_grad():
                scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
                scheduler.set_timesteps(nfe)
                x = torch.randn(model.shape, generator=g())
                for t in scheduler.timesteps:
                    out = pipe.transformer(torch.cat([x, x]), timestep=t.expand(2 * n), class_labels=labels).sample
                    v_c, v_u = out.chunk(2)
                    x = scheduler.step(v_u + scale * (v_c - v_u), t, x).prev_sample
                return model.decode(x)
    else:
        pipe.set_progress_bar_config(disable=True)

        def go():
            if model_key == "dit":
                return pipe(class_labels=cond, guidance_scale=scale, generator=g(), num_inference_steps=nfe,
                            output_type="np").images
            return pipe(cond, guidance_scale=scale, generator=g(), num_inference_steps=nfe, output_type="latent").images

    # time inside the network's forward, in the same run: "in-run" ratios are immune to the machine's load drift
    inside, started = [0.0], [0.0]
    module.register_forward_pre_hook(lambda *a: started.__setitem__(0, time.perf_counter()))
    module.register_forward_hook(lambda *a: inside.__setitem__(0, inside[0] + time.perf_counter() - started[0]))
    go()  # warm-up: first-call allocations and kernel selection
    inside[0] = 0.0
    before = rss_gb()
    start = time.perf_counter()
    go()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    return {"model": model_key, "case": case, "seconds": seconds, "in_network_s": inside[0], "peak_rss_gb": peak,
            "rss_before_gb": before}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["dit", "sd"], choices=sorted(SETTINGS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    ap.add_argument("--case", nargs=2, default=None, help=argparse.SUPPRESS)  # internal: run one case, print JSON
    args = ap.parse_args()
    if args.case:
        print(json.dumps(one_case(args.case[0], args.case[1], args.threads)))
        return

    rows: list[dict] = []
    for r in range(args.repeats):
        for model_key in args.models:
            for case in CASES:
                out = subprocess.run([sys.executable, __file__, "--case", model_key, case, "--threads",
                                      str(args.threads)], capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"repeat {r + 1}/{args.repeats} {model_key:>4} {case:>9}: {rows[-1]['seconds']:.2f} s, "
                      f"peak {rows[-1]['peak_rss_gb']:.2f} GB", flush=True)

    summary = {}
    print(f"\n{platform.processor() or platform.machine()}, {args.threads} thread(s), median of {args.repeats} "
          "fresh processes per case")
    for model_key in args.models:
        cfg = SETTINGS[model_key]
        med = {c: statistics.median(x["seconds"] for x in rows if x["model"] == model_key and x["case"] == c)
               for c in CASES}
        mem = {c: statistics.median(x["peak_rss_gb"] for x in rows if x["model"] == model_key and x["case"] == c)
               for c in CASES}
        inrun = {c: statistics.median(x["seconds"] / x["in_network_s"] for x in rows
                                      if x["model"] == model_key and x["case"] == c) for c in CASES}
        summary[model_key] = {"seconds": med, "in_run_ratio": inrun, "peak_rss_gb": mem, **cfg}
        print(f"\n{cfg['name']}: batch {cfg['batch']}, {cfg['nfe']} NFEs")
        print(f"{'case':>10} {'seconds':>8} {'x bare':>7} {'x diffusers':>12} {'in-run':>7} {'peak GB':>8} "
              f"{'x diffusers':>12}")
        for c in CASES:
            print(f"{c:>10} {med[c]:>8.2f} {med[c] / med['bare']:>7.3f} {med[c] / med['diffusers']:>12.3f} "
                  f"{inrun[c]:>7.3f} {mem[c]:>8.2f} {mem[c] / mem['diffusers']:>12.3f}")
    print("\nin-run: the run's wall time over the time spent inside the network's forward in that same run "
          "(1.00 = no overhead beyond the network; DiT runs include one VAE decode)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "summary": summary, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
