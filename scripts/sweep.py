"""Table 1 as a sweep: FID, KID and class accuracy of vanilla and Nested Diffusion stopped at a percentage of a budget.

    python scripts/sweep.py --budgets 100 150 250 --samples 1000 --out runs/table1              # one process
    torchrun --nproc_per_node 2 scripts/sweep.py --budgets 100 150 250 --samples 1000 --out runs/table1

(No option of the sweep is a prefix of one of torchrun's, which torchrun would take for an abbreviation of its own:
the command needs no `--` before the script.)

One row per (budget, percent, sampler, seed): the sampler runs its whole budget once per sample, and each percent
reads the preview it holds at nfe = budget * percent // 100 (`Result.at`, the same anytime previews the chapters
plot); only those previews are decoded. Samplers are the library's (`nestedlib.pipelines.paper_samplers`): vanilla
= DDPM with the learned variance, `budget` steps (its preview is the network's mean); nested = 5 outer DDIM steps of
budget / 5 inner DDPM steps (its preview is the last finished inner run).

Provenance: the sweep records the commit it ran from (results.json: `commit`, `modified_files`) and refuses to run
from a working tree with uncommitted changes unless given --allow-dirty (then the commit reads '<sha>+dirty'), so
that a committed result names a commit that regenerates it.

Samples are reproducible one by one (`nestedlib.sweep`, shared with the Table 1 chapter): sample i of seed s has
label i % 10 (emoji-dit: a label in the held-out part's class proportions, `data.label_plan`) and draws its noise from its own stream (`sample_generators(s, [i])`), and the samples are cut into fixed
micro-batches of --batch consecutive indices, so every network and decoder call sees the same batch whatever the
number of processes. Under torchrun (torch.distributed: gloo on CPU, NCCL on GPU) rank r samples micro-batches
r, r + K, ...; rank 0 gathers the images, computes the metrics and writes OUT/results.json. 1 and K processes therefore give identical numbers, given the
same threads per process (the VAE's convolutions round differently with another thread count: about 1e-7 relative in
FID). torchrun runs 1 thread per process; on a shared CPU that is also far faster than 1 process of several threads,
whose OpenMP threads wait for each other whenever another user holds a core.

Long sweeps: with --resume every finished micro-batch is saved under OUT/parts (its decoded previews and the time it
took), and a run with the same command reads those back instead of sampling them again, so a sweep cut off by the end
of a session continues in the next one; the numbers are the same as one uninterrupted run's. A part made from another
commit or with other settings is refused with what differs.

Metrics (`nestedlib.metrics.Judge`, in the feature space of the model's judge, its registry entry's `judge`; --judges
adds others) compare the n samples of a cell with the judge's held-out images (the 1,000 held-out MNIST digits; for
emoji-dit the 946 pictures of unseen emoji), whose features are computed once per judge; the real-vs-real floor (n
training images against the same held-out ones) is written beside them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAPER_BUDGETS = [100, 150, 250]
PAPER_PERCENTS = [20, 40, 60, 80, 100]
SAMPLERS = ("vanilla", "nested")
JUDGES = ("classifier", "logits", "pixels")  # feature spaces of FID/KID (nestedlib.metrics.FEATURES, offline ones)


# ----------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--model", default="mnist-dit", help="registry name of a class-conditional DiT (default mnist-dit)")
    ap.add_argument("--budgets", type=int, nargs="+", default=PAPER_BUDGETS, help="total NFEs (default 100 150 250)")
    ap.add_argument("--percents", type=int, nargs="+", default=PAPER_PERCENTS,
                    help="stops, in percent of the budget (default 20 40 60 80 100)")
    ap.add_argument("--samples", dest="n", type=int, default=1000,
                    help="samples per cell (default 1000; the paper: 50,000)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one row per seed (default 0)")
    ap.add_argument("--guidance", type=float, default=None,
                    help="classifier-free guidance scale (default: the model's, 1.5 for mnist-dit)")
    ap.add_argument("--unconditional", action="store_true", help="sample the null class with guidance 1")
    ap.add_argument("--preset", default="book", choices=("book", "paper"),
                    help="'paper': the authors' space_timesteps grids and 3-channel guidance; 'book' (default)")
    ap.add_argument("--outer", type=int, default=5, help="outer steps of Nested Diffusion (default 5, the paper's)")
    ap.add_argument("--batch", type=int, default=50,
                    help="samples per micro-batch (default 50); part of the result's definition, like the seed")
    ap.add_argument("--judges", nargs="+", default=["classifier"], choices=tuple(JUDGES),
                    help="feature spaces of FID/KID (default classifier): fid and kid are always the classifier's; "
                         "each other judge adds fid_<judge> and kid_<judge> to the rows")
    ap.add_argument("--device", default="auto",
                    help="auto, cpu or cuda (under torchrun: cuda:LOCAL_RANK, or all ranks on one GPU when there are "
                         "more ranks than GPUs)")
    ap.add_argument("--out", default="runs/sweep", help="folder of results.json (default runs/sweep)")
    ap.add_argument("--resume", action="store_true",
                    help="save every finished micro-batch under OUT/parts and reuse the ones already there, so that "
                         "an interrupted sweep continues where it stopped (from the same commit, same settings and "
                         "thread count; anything else is refused)")
    ap.add_argument("--allow-dirty", action="store_true",
                    help="run from a working tree with uncommitted changes (recorded as '<commit>+dirty' with the "
                         "changed files); without it the sweep refuses, so that its commit regenerates its results")
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line; a bad value exits with a message that says what to pass instead."""
    ap = parser()
    args = ap.parse_args(argv)
    from nestedlib import models

    supported = sweepable()
    if args.model not in supported:
        ap.error(f"--model {args.model}: the sweep judges samples with a bundled classifier and its held-out images, "
                 f"so it supports {', '.join(supported)} (DiT-XL/2 needs Inception FID, which is for online GPU users)")
    if args.outer < 1:
        ap.error(f"--outer must be a positive number of outer steps, got {args.outer}")
    for b in args.budgets:
        if b < 1 or b % args.outer:
            lo = max(args.outer, b - b % args.outer)
            ap.error(f"--budgets: a budget of {b} NFEs does not divide into {args.outer} outer steps of Nested "
                     f"Diffusion; use a positive multiple of {args.outer} (e.g. {lo} or {lo + args.outer})")
    for p in args.percents:
        if not 0 < p <= 100:
            ap.error(f"--percents: {p} is outside (0, 100]; a stop is a percentage of the budget, e.g. 20 40 60 80 100")
    for b in args.budgets:
        for p in args.percents:
            first = b // args.outer  # NFEs of Nested Diffusion's first preview
            if b * p // 100 < first:
                ap.error(f"--percents: {p} % of {b} NFEs is {b * p // 100} NFEs, before Nested Diffusion's first "
                         f"preview ({first} NFEs, {100 // args.outer} % of the budget with {args.outer} outer "
                         f"steps); use percents of at least {-(-100 * first // b)}")
    if args.n < 2:
        ap.error(f"--samples must be at least 2 samples per cell (FID needs a covariance), got {args.n}")
    if args.batch < 1:
        ap.error(f"--batch must be a positive number of samples, got {args.batch}")
    for name in ("budgets", "percents", "seeds", "judges"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            ap.error(f"--{name} lists a value twice: {values}")
    if args.unconditional:
        if args.guidance not in (None, 1.0):
            ap.error(f"--unconditional samples the null class, which has no guidance; drop --guidance {args.guidance} "
                     "(it is 1)")
        args.guidance = 1.0
    elif args.guidance is not None and args.guidance <= 0:
        ap.error(f"--guidance must be positive (1 = no guidance), got {args.guidance}")
    return args


# ----------------------------------------------------------------------------------------------------------------
# Processes: one, or K under torchrun
# ----------------------------------------------------------------------------------------------------------------


class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    def __init__(self, device: str):
        import torch
        import torch.distributed as dist

        from nestedlib.runtime import pick_device

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = pick_device(device)
        shared = False  # several ranks on one GPU: they feed it in parallel (sampling is partly CPU-bound)
        if self.device.type == "cuda" and "LOCAL_RANK" in os.environ:
            gpus = torch.cuda.device_count()
            shared = self.world > gpus
            self.device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % gpus)
            torch.cuda.set_device(self.device)
        self.on = "WORLD_SIZE" in os.environ and self.world > 1
        if self.on and not dist.is_initialized():  # NCCL needs one GPU per rank; gloo gathers through the CPU
            dist.init_process_group("nccl" if self.device.type == "cuda" and not shared else "gloo")

    def gather(self, obj) -> list | None:
        """Every rank's obj at rank 0 (a list by rank), None elsewhere."""
        if not self.on:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if self.on:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------------------------


def chunks(n: int, batch: int) -> list[range]:
    """The fixed micro-batches of a cell (`nestedlib.sweep.chunks`)."""
    from nestedlib import sweep

    return sweep.chunks(n, batch)


def sweepable() -> tuple[str, ...]:
    """The registry's class-conditional DiTs whose judge is a bundled classifier with a dataset (its reference set)."""
    from nestedlib import models

    return tuple(m for m in models.names(family="dit") if models.info(m).judge
                 and models.info(models.info(m).judge).data is not None)


def dataset_of(model: str) -> str:
    """The dataset of the model's judge: its held-out part is the reference set, its training part the floor's."""
    from nestedlib import models

    return models.info(models.info(model).judge).data


def labels_of(indices: range, model: str = "mnist-dit") -> list[int]:
    """Sample i's class (`nestedlib.sweep.labels_of` with the judge's dataset): i % 10 for the digit models (100
    samples hold 10 of each digit), the held-out proportions for emoji-dit."""
    from nestedlib import models, sweep

    return sweep.labels_of(indices, models.info(model).classes, dataset_of(model))


class Sampler:
    """Builds the library's model for one micro-batch (its labels) from a pipeline loaded once."""

    def __init__(self, args, device):
        from nestedlib import models

        self.args, self.device = args, device
        self.pipe = models.load(args.model, device=device)
        self.entry = models.info(args.model)
        self.guidance = args.guidance if args.guidance is not None else self.entry.guidance

    def model(self, indices: range):
        from nestedlib.pipelines import dit_model

        if not self.args.unconditional:
            return dit_model(self.pipe, labels_of(indices, self.args.model), self.guidance, self.args.model,
                             self.args.preset, classes=self.entry.classes)
        null = self.entry.null_class  # the null class, unguided: unconditional
        return dit_model(self.pipe, [null] * len(indices), 1.0, self.args.model, self.args.preset,
                         classes=self.entry.classes)


class Parts:
    """--resume: each finished micro-batch of a (budget, seed) in its own file under OUT/parts, with the settings
    that define it; a file made by another commit or other settings is refused, never mixed in."""

    # what a micro-batch's numbers depend on, beside its budget, seed and indices
    KEY = ("model", "preset", "unconditional", "outer", "percents", "batch")  # and the guidance it resolved to

    def __init__(self, args, code: dict, guidance: float, device):
        import torch

        self.on = args.resume
        self.folder = Path(args.out) / "parts"
        self.key = {**{k: getattr(args, k) for k in self.KEY}, "guidance": guidance, "commit": code["commit"],
                    "threads": torch.get_num_threads(), "device": torch.device(device).type}
        self.resumed = 0  # micro-batches read back

    def path(self, budget: int, seed: int, idx: range) -> Path:
        return self.folder / f"budget{budget}-seed{seed}-{idx.start:07d}-{idx.stop:07d}.pt"

    def load(self, budget: int, seed: int, idx: range) -> dict | None:
        """The saved micro-batch, or None when there is none (or --resume is off)."""
        import torch

        path = self.path(budget, seed, idx)
        if not self.on or not path.exists():
            return None
        saved = torch.load(path, weights_only=True)
        if saved["key"] != self.key:
            differ = sorted(k for k in self.key if saved["key"].get(k) != self.key[k])
            what = "; ".join(f"{k}: {saved['key'].get(k)!r} there, {self.key[k]!r} now" for k in differ)
            commit = str(saved["key"].get("commit", "")).split("+")[0]
            sys.exit(f"scripts/sweep.py --resume: {path} was made with other settings ({what}). Run with those "
                     f"settings (the commit is checked out with `git worktree add DIR {commit}`), or give another "
                     f"--out, or delete {self.folder}.")
        self.resumed += 1
        return saved

    def save(self, budget: int, seed: int, idx: range, part: dict, clock: dict) -> None:
        import torch

        if self.on:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.path(budget, seed, idx)
            torch.save({"key": self.key, "part": part, "clock": clock}, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)  # whole or absent, also when killed while writing


def sample_cell(sampler: Sampler, budget: int, seed: int, mine: list[range], args, bar, clock: dict,
                parts: Parts) -> dict:
    """This rank's micro-batches of one (budget, seed): the decoded preview at every stop, for both samplers.

    Returns {first index of a micro-batch: {"images": {(sampler, percent): images}, "preview_nfe": {...}}}.
    """
    import torch

    from nestedlib.sweep import sample_batch

    out = {}
    for idx in mine:
        saved = parts.load(budget, seed, idx)
        if saved is not None:  # finished before an interruption: its images and the time it took then
            out[idx.start] = saved["part"]
            for k, v in saved["clock"].items():
                clock[k] += v
            bar.update(2 * budget * len(idx))
            continue
        before = dict(clock)
        model = sampler.model(idx)
        start = time.perf_counter()
        results = sample_batch(model, budget, seed, idx, outer=args.outer, bar=bar)  # both samplers, own streams
        clock["sampling_s"] += time.perf_counter() - start
        part = {"images": {}, "preview_nfe": {}}
        for name in SAMPLERS:
            result = results[name]
            start = time.perf_counter()
            decoded = {}  # preview NFE -> images: nested at 20 % and 30 % of a budget may hold the same preview
            for p in args.percents:
                event = result.at(budget * p // 100)
                if event.nfe not in decoded:
                    decoded[event.nfe] = model.decode(event.x0).to("cpu", torch.float32)
                part["images"][name, p] = decoded[event.nfe]
                part["preview_nfe"][name, p] = event.nfe
            clock["decode_s"] += time.perf_counter() - start
            clock["image_nfe"] += result.nfe * len(idx)
            clock["decoded_images"] += len(decoded) * len(idx)
        out[idx.start] = part
        parts.save(budget, seed, idx, part, {k: clock[k] - before[k] for k in clock})
    return out


# ----------------------------------------------------------------------------------------------------------------
# Metrics (rank 0)
# ----------------------------------------------------------------------------------------------------------------


def cell_rows(parts: list[dict], budget: int, seed: int, args, judges: dict, bar) -> list[dict]:
    """Rows of one (budget, seed) from every rank's micro-batches, put back in sample order; `judges` maps a feature
    space to its `metrics.Judge` (the classifier's gives fid, kid, kid_std and class_accuracy, the others fid_<name>
    and kid_<name>)."""
    import torch

    merged = {}
    for part in parts:
        merged.update(part)
    starts = sorted(merged)
    labels = None if args.unconditional else labels_of(range(args.n), args.model)
    rows = []
    for name in SAMPLERS:
        for p in args.percents:
            fake = torch.cat([merged[s]["images"][name, p] for s in starts])
            assert len(fake) == args.n, (len(fake), args.n)
            preview = {merged[s]["preview_nfe"][name, p] for s in starts}
            main = judges["classifier"].scores(fake, labels, seed=seed)
            other = {}
            for judge, scorer in judges.items():  # FID and KID of other judges, beside the classifier's
                if judge != "classifier":
                    more = scorer.scores(fake, seed=seed)
                    other[f"fid_{judge}"], other[f"kid_{judge}"] = more["fid"], more["kid"]
            rows.append({
                "budget": budget, "percent": p, "nfe": budget * p // 100, "preview_nfe": preview.pop(),
                "sampler": name, "seed": seed, "n": args.n,
                "fid": main["fid"], "kid": main["kid"], "kid_std": main["kid_std"],
                "class_accuracy": main.get("accuracy"),
                **other,
            })
            bar.update(1)
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    from nestedlib import runtime

    code = runtime.check_clean(ROOT, args.allow_dirty, "scripts/sweep.py")  # before any work: every rank sees the same tree
    wall = time.perf_counter()
    import torch
    from tqdm.auto import tqdm

    from nestedlib import data, metrics, models
    from nestedlib.runtime import save_results

    dist = Dist(args.device)
    sampler = Sampler(args, dist.device)
    store = Parts(args, code, sampler.guidance, dist.device)
    cells = chunks(args.n, args.batch)
    mine = cells[dist.rank :: dist.world]
    lead = dist.rank == 0
    if lead:
        dataset = dataset_of(args.model)
        real = data.split(dataset, "heldout")[0].to(dist.device)  # metrics run where the samples were drawn
        clf = models.load(models.info(args.model).judge, device=dist.device)
        # one judge per feature space, the held-out digits' features computed once each
        judges = {name: metrics.Judge(clf, real, name) for name in dict.fromkeys(["classifier", *args.judges])}
    clock = {"sampling_s": 0.0, "decode_s": 0.0, "gather_s": 0.0, "metrics_s": 0.0, "image_nfe": 0,
             "decoded_images": 0}
    total = 2 * sum(args.budgets) * len(args.seeds) * sum(len(c) for c in mine)
    rows, floors = [], []
    with torch.inference_mode(), \
            tqdm(total=total, unit="img-NFE", unit_scale=True, desc=f"sampling (rank 0 of {dist.world})",
                 disable=not lead, dynamic_ncols=True) as bar, \
            tqdm(total=len(args.budgets) * len(args.seeds) * len(SAMPLERS) * len(args.percents), desc="metrics",
                 disable=not lead, dynamic_ncols=True, position=1) as mbar:
        for budget in args.budgets:
            for seed in args.seeds:
                part = sample_cell(sampler, budget, seed, mine, args, bar, clock, store)
                start = time.perf_counter()
                parts = dist.gather(part)
                clock["gather_s"] += time.perf_counter() - start
                if lead:
                    start = time.perf_counter()
                    rows += cell_rows(parts, budget, seed, args, judges, mbar)
                    clock["metrics_s"] += time.perf_counter() - start
        if lead:
            start = time.perf_counter()
            # the cells compare n samples with all held-out images; the floor compares as many training images
            # (at most the 4,000 digits or 2,866 emoji there are: above that it overstates the floor a little) with
            # the same held-out set
            n_floor = min(args.n, len(data.split(dataset, "train")[0]))
            floors = [{"seed": s, **metrics.real_floor(clf, n_floor, seed=s, n_real=len(real), dataset=dataset)}
                      for s in args.seeds]
            clock["metrics_s"] += time.perf_counter() - start
    clock["wall_s"] = time.perf_counter() - wall
    clock["resumed"] = store.resumed
    clocks = dist.gather(clock)
    dist.close()
    if not lead:
        return None
    rows.sort(key=lambda r: (r["budget"], r["percent"], SAMPLERS.index(r["sampler"]), r["seed"]))
    sampling = max(c["sampling_s"] + c["decode_s"] for c in clocks)  # the slowest rank bounds the phase
    image_nfe = sum(c["image_nfe"] for c in clocks)
    parameters = {k: v for k, v in vars(args).items() if k not in ("device", "allow_dirty", "resume")}
    dataset = dataset_of(args.model)
    law = "digit i % 10" if dataset == "mnist" else "data.label_plan (held-out class proportions)"
    parameters.update(guidance=sampler.guidance, labels=f"sample i: {law}" if not args.unconditional else
                      "null class", noise="sample_generators(seed, [i]) per sample",
                      real=f"{'MNIST' if dataset == 'mnist' else dataset} held-out ({len(data.split(dataset, 'heldout')[1]):,})")
    path = save_results(
        args.out, parameters, rows=rows, floor=floors, model=args.model, commit=code["commit"],
        modified_files=code["modified"],
        processes=dist.world, threads=torch.get_num_threads(), device=str(dist.device), machine=runtime.machine(dist.device),
        time={"wall_s": clocks[0]["wall_s"], "sampling_s": [c["sampling_s"] for c in clocks],
              "decode_s": [c["decode_s"] for c in clocks], "gather_s": [c["gather_s"] for c in clocks],
              "metrics_s": clocks[0]["metrics_s"],
              # --resume: micro-batches read back from OUT/parts; their times are the runs that made them
              "resumed_micro_batches": sum(c["resumed"] for c in clocks)},
        image_nfe=image_nfe, decoded_images=sum(c["decoded_images"] for c in clocks),
        image_nfe_per_s=image_nfe / sampling,  # sampling phase (network, sampler and preview decodes) of all ranks
    )
    print(table(rows, floors))
    print(f"wrote {path} ({dist.world} process(es), {clocks[0]['wall_s']:.1f} s)")
    return {"path": str(path), "rows": rows, "floor": floors}


def table(rows: list[dict], floors: list[dict]) -> str:
    """Table 1's layout: FID of vanilla and nested at each stop (mean over seeds)."""
    lines = ["budget  percent  nfe   FID vanilla  FID nested   acc vanilla  acc nested"]
    keys = sorted({(r["budget"], r["percent"]) for r in rows})
    for b, p in keys:
        cell = {s: [r for r in rows if (r["budget"], r["percent"], r["sampler"]) == (b, p, s)] for s in SAMPLERS}
        fid = {s: sum(r["fid"] for r in v) / len(v) for s, v in cell.items()}
        acc = {s: [r["class_accuracy"] for r in v] for s, v in cell.items()}
        acc = {s: "   -" if None in a else f"{sum(a) / len(a):6.3f}" for s, a in acc.items()}
        lines.append(f"{b:6d}  {p:7d}  {b * p // 100:4d}  {fid['vanilla']:11.2f}  {fid['nested']:10.2f}   "
                     f"{acc['vanilla']:>11}  {acc['nested']:>10}")
    floor = sum(f["fid"] for f in floors) / len(floors)
    lines.append(f"real-vs-real floor at n = {floors[0]['n']}: FID {floor:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
