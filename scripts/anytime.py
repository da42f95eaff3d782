"""Quality at every preview of many samplers, for the anytime metric and the inner-step allocation search.

    python scripts/anytime.py --out results/anytime-cpu/report.json --budgets 100 --seeds 3 4 5 --n 100 \
        --specs vanilla "nested 5x20" "front 5" "back 5" "geometric 5"
    python scripts/anytime.py --out results/anytime-cpu/search.json --budgets 100 --seeds 0 1 2 --n 64 \
        --search --outers 3 5 8 10 --ratios 0.5 0.67 1 1.5 2 3

Each (budget, seed, sampler) is one `nestedlib.anytime.quality_curve` on the bundled DiT (paper preset, guidance
1.5, sample i asks for digit i % 10 and draws from stream (seed, i)), scored against the 1,000 held-out digits.
The file is rewritten after every curve, and a re-run skips the curves it already holds (resume after a stop).
`--search` adds the candidates "geometric O rR" for every outer count O and ratio R (ratio 1 is the even split).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write (and resume from)")
    p.add_argument("--budgets", type=int, nargs="+", default=[100])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n", type=int, default=100, help="samples per curve")
    p.add_argument("--specs", nargs="*", default=[], help="samplers, as nestedlib.anytime.samplers reads them")
    p.add_argument("--search", action="store_true", help="add the geometric allocations of --outers x --ratios")
    p.add_argument("--outers", type=int, nargs="+", default=[3, 5, 8, 10])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.67, 1.0, 1.5, 2.0, 3.0])
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def specs_of(args) -> list[str]:
    specs = list(args.specs)
    if args.search:
        specs += [f"geometric {o} r{r:g}" for o in args.outers for r in args.ratios]
    return list(dict.fromkeys(specs))


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from tqdm.auto import tqdm

    from nestedlib import anytime, data, metrics, models, runtime
    from nestedlib.pipelines import prepare

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"curves": {}, "floors": {}}
    record["parameters"] = {**vars(args), "model": "mnist-dit", "preset": "paper"}
    record["environment"] = {"commit": runtime.provenance(ROOT)["commit"], "machine": runtime.machine()["cpu"],
                             "torch": torch.__version__, "threads": args.threads}
    clf = models.load("mnist-classifier")
    reference = metrics.Judge(clf, data.mnist("heldout")[0])  # held-out features once
    labels = torch.tensor([i % 10 for i in range(args.n)])
    model = prepare("mnist-dit", cond=labels.tolist(), guidance_scale=args.guidance, preset="paper")
    specs, record["infeasible"] = specs_of(args), record.get("infeasible", {})
    for b in args.budgets:  # a candidate whose inner grid does not fit under an outer t is recorded, not run
        for spec in specs:
            try:
                anytime.samplers(model, b, [spec])
            except ValueError as err:
                record["infeasible"][f"{b}|{spec}"] = str(err)
    todo = [(b, s, spec) for b in args.budgets for s in args.seeds for spec in specs
            if f"{b}|{s}|{spec}" not in record["curves"] and f"{b}|{spec}" not in record["infeasible"]]
    print(f"{len(todo)} curves to run; infeasible: {sorted(record['infeasible'])}")
    for seed in args.seeds:
        if str(seed) not in record["floors"]:
            # class-balanced when the n samples hold n / 10 of each digit (sample i asks for digit i % 10)
            record["floors"][str(seed)] = metrics.real_floor(clf, args.n, seed, n_real=1000, balanced=args.n % 10 == 0)
    for budget, seed, spec in tqdm(todo, desc="curves"):
        process = anytime.samplers(model, budget, [spec])[spec]
        start = time.perf_counter()
        curve = anytime.quality_curve(model, process, seed, reference, labels)
        curve.update(budget=budget, seed=seed, spec=spec, n=args.n, wall_s=time.perf_counter() - start,
                     inner_steps=getattr(process.x0_sampler, "steps", None) if spec != "vanilla" else None)
        record["curves"][f"{budget}|{seed}|{spec}"] = curve
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, out)
    return record


if __name__ == "__main__":
    main()
