"""Which settings give Nested Diffusion an early advantage on mnist-sd? 100 prompts x 3 seeds x 100 NFEs per setting.

    OMP_NUM_THREADS=1 python scripts/text_to_image_settings.py g4 100 > g4.log   # settings at w = 4
    OMP_NUM_THREADS=1 python scripts/text_to_image_settings.py g 100 > g.log     # guidance scales

Each line of the output is one (setting, guidance, seed) row: prompt accuracy, FID and KID (`nestedlib.metrics.Judge`,
the bundled classifier's features, against the 1,000 held-out digits; KID's subsets drawn with seed 0) of the preview
held after 10 to 100 % of the budget; `results/text-to-image-settings/settings.json` is the list of such rows.
Prompt i asks for digit i % 10 with the training template (i // 10) % 8; image i of seed s draws x_T from the stream
(s, i) and the run's own noise from the stream (s + 1000, i).
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from diffusers import DPMSolverMultistepScheduler  # noqa: E402

from nestedlib import data  # noqa: E402
from nestedlib.metrics import Judge  # noqa: E402
from nestedlib.models import load, prompts_for  # noqa: E402
from nestedlib.pipelines import inner_from_scheduler, paper_samplers, prepare  # noqa: E402
from nestedlib.sampling import nested, run, sample_generators, vanilla  # noqa: E402
from nestedlib.schedules import split_budget  # noqa: E402

torch.set_num_threads(1)
if len(sys.argv) != 3 or sys.argv[1] not in ("g4", "g") or not sys.argv[2].isdigit() or int(sys.argv[2]) < 2:
    sys.exit("usage: python scripts/text_to_image_settings.py {g4,g} N  (g4: settings at guidance 4; g: guidance "
             "scales; N >= 2 prompts per seed)")
group, n = sys.argv[1], int(sys.argv[2])
seeds, total = [0, 1, 2], 100
labels = [i % 10 for i in range(n)]
prompts = [prompts_for(label)[i // 10 % 8] for i, label in enumerate(labels)]
judge = Judge(load("mnist-classifier"), data.mnist("heldout")[0])  # the held-out digits' features computed once
stops = [10, 20, 40, 60, 80, 100]


def measure(res, decode):
    """{stop %: {"acc", "fid", "kid"} of the preview held there, or None before the first preview}."""
    out = {}
    for k in stops:
        if res.previews[0].nfe > k:
            out[k] = None
            continue
        score = judge.scores(decode(res.at(k).x0), labels, seed=0)
        out[k] = dict(acc=score["accuracy"], fid=score["fid"], kid=score["kid"])
    return out


# (name, guidance, None for vanilla DDIM or (outer steps, inner eta, inner solver))
configs = {
    "g4": [("nested25x4_eta0.85", 4.0, (25, 0.85, "ddim")), ("nested25x4_dpm", 4.0, (25, None, "dpm")),
           ("nested10x10", 4.0, (10, 0.85, "ddim")), ("nested50x2", 4.0, (50, 0.85, "ddim")),
           ("nested25x4_eta0", 4.0, (25, 0.0, "ddim"))],
    "g": [("vanilla", 2.0, None), ("nested25x4_eta0.85", 2.0, (25, 0.85, "ddim")), ("vanilla", 7.5, None),
          ("nested25x4_eta0.85", 7.5, (25, 0.85, "ddim")), ("vanilla", 4.0, None)],
}[group]
models = {}
for name, g, spec in configs:
    if g not in models:
        models[g] = prepare("mnist-sd", cond=prompts, guidance_scale=g, preset="paper")
    m = models[g]
    if spec is None:
        proc = paper_samplers(m, total)["vanilla"]
    else:
        outer, eta, kind = spec
        if kind == "ddim":
            inner = vanilla(m.network, m.schedule, split_budget(total, outer), transition="ddim", eta=eta, t_end=1,
                            final_alpha_cumprod=m.schedule.abar(0))
        else:
            solver = DPMSolverMultistepScheduler(trained_betas=m.schedule.betas.numpy(), algorithm_type="dpmsolver++",
                                                 solver_order=2)
            inner = inner_from_scheduler(solver, m.network, split_budget(total, outer), t_end=1)
        proc = nested(inner, outer)
    for seed in seeds:
        t0 = time.time()
        res = run(proc, m.noise(sample_generators(seed, range(n))), generator=sample_generators(seed + 1000, range(n)))
        row = dict(name=name, guidance=g, seed=seed, n=n, metrics=measure(res, m.decode), wall=time.time() - t0)
        print(json.dumps(row), flush=True)
