"""Table 1 of the paper and its Figures 2, 3, 4 and 6, for any class-conditional DiT: the code the Table 1 chapters
share.

A chapter names its model (the bundled `mnist-dit`, `emoji-dit`, the hub's DiT-XL/2 or a saved DiTPipeline folder)
and this module supplies what follows from it: the committed `scripts/sweep.py` sweeps of that model and their layout
as Table 1, the in-book run's labels (`sweep.labels_of` with the judge's dataset), judges (`metrics.Judge` against
the judge's held-out images) and floors, the decoded previews every chart reads, and the strength of the anytime
effect. The chapters keep the sampler calls themselves (`sweep.sample_batch`, `paper_samplers`, `run`) in view;
this module collects, scores and lays out what those calls return. Its figure functions return the figure and leave
showing it to the chapter (`style.show_figure`, which adds the phone layout).

Rows are dicts with the sweep's columns: budget, percent, nfe, preview_nfe, sampler ("vanilla" or "nested"), seed,
n, fid, kid, kid_std, class_accuracy and fid_<judge>/kid_<judge> for other feature spaces.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import data, metrics, models, sweep
from .widgets import image_grid

ROOT = Path(__file__).resolve().parents[1]  # the repository: results/, data/paper/
PAPER_CSV = ROOT / "data" / "paper" / "table1.csv"
SAMPLERS = ("vanilla", "nested")
BUDGETS = (100, 150, 250)  # the paper's total NFEs
PERCENTS = (20, 40, 60, 80, 100)  # the paper's stops, in percent of the budget
JUDGE_NAMES = {"fid": "classifier features", "fid_logits": "classifier logits", "fid_pixels": "4x4-pooled pixels"}
OFFLINE_JUDGES = ("classifier", "logits", "pixels")  # the feature spaces of a bundled judge (metrics.FEATURES)
XL_STAND_IN = models.info("facebook/DiT-XL-2-256").stand_in  # what a saved DiTPipeline folder (DiT-XL/2) is compared with


# ----------------------------------------------------------------------------------------------------------------
# Rows and cells
# ----------------------------------------------------------------------------------------------------------------


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of a Table 1 cell over seeds."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def cell(rows, budget: int, percent: int, sampler: str, key: str = "fid") -> list[float]:
    """One entry of Table 1 (budget, percent, sampler) over seeds, in seed order (None values left out)."""
    hit = sorted((r for r in rows if (r["budget"], r["percent"], r["sampler"]) == (budget, percent, sampler)),
                 key=lambda r: r["seed"])
    return [r[key] for r in hit if r.get(key) is not None]


def paper_table(path: str | Path = PAPER_CSV) -> dict[tuple[int, int], tuple[float, float]]:
    """The paper's Table 1 (data/paper/table1.csv): {(budget, percent): (vanilla FID, nested FID)}."""
    lines = [l for l in Path(path).read_text().splitlines() if l and l[0] != "#"]
    rows = [dict(zip(lines[0].split(","), l.split(","))) for l in lines[1:]]
    return {(int(r["total_nfe"]), int(r["percent"])): (float(r["fid_van"]), float(r["fid_nd"])) for r in rows}


def paper_rows(paper: dict | None = None) -> list[dict]:
    """The paper's Table 1 as rows (seed 0, key "fid"), so that every function of rows reads it as it reads ours."""
    paper = paper_table() if paper is None else paper
    return [{"budget": b, "percent": q, "sampler": s, "seed": 0, "fid": v[i]}
            for (b, q), v in paper.items() for i, s in enumerate(SAMPLERS)]


def ratios(rows, key: str = "fid") -> dict[tuple[int, int], float]:
    """Table 1's ratio nested / vanilla of the seed means: {(budget, percent): ratio}."""
    out = {}
    for b, q in sorted({(r["budget"], r["percent"]) for r in rows}):
        van, nd = cell(rows, b, q, "vanilla", key), cell(rows, b, q, "nested", key)
        if van and nd:
            out[b, q] = float(np.mean(nd) / np.mean(van))
    return out


def effect(rows, key: str = "fid") -> dict[int, dict]:
    """The anytime effect of Table 1, per budget: early ratio F_nd(20%)/F_van(20%), final ratio at 100 %, gap
    closed (F_van(20%) - F_nd(20%)) / (F_van(20%) - F_van(100%)), and the first percent where vanilla is no worse."""
    out = {}
    for b in sorted({r["budget"] for r in rows}):
        f = {(s, q): np.mean(cell(rows, b, q, s, key)) for s in SAMPLERS for q in PERCENTS
             if cell(rows, b, q, s, key)}
        if ("vanilla", 20) not in f or ("nested", 20) not in f or ("vanilla", 100) not in f:
            continue
        catch = next((q for q in PERCENTS if ("nested", q) in f and f["vanilla", q] <= f["nested", q]), None)
        out[b] = {"early": f["nested", 20] / f["vanilla", 20], "final": f["nested", 100] / f["vanilla", 100],
                  "gap_closed": (f["vanilla", 20] - f["nested", 20]) / (f["vanilla", 20] - f["vanilla", 100]),
                  "vanilla_better_from": catch}
    return out


def shape(rows, floor: float = 0.0, key: str = "fid") -> dict[int, dict]:
    """The shape of Figure 2's curves per budget: vanilla's FID at 20, 40 and 60 % over its final one, nested's first
    preview (20 %, 5 outer steps) over its final one, the early ratio nested / vanilla at 20 % and the gap closed,
    each computed from FID minus `floor` (the real-vs-real FID of the same sizes; 0 keeps the raw FIDs), so that a
    judge whose floor is far from 0 reads like one whose floor is 0. A ratio whose divisor is not above the floor is
    None (the curve has reached the floor: no shape left to measure)."""
    out = {}
    for b in sorted({r["budget"] for r in rows}):
        f = {(s, q): float(np.mean(cell(rows, b, q, s, key))) - floor for s in SAMPLERS for q in PERCENTS
             if cell(rows, b, q, s, key)}
        if not all((s, q) in f for s in SAMPLERS for q in (20, 100)):
            continue
        over = lambda a, d: a / d if d > 0 else None  # noqa: E731
        out[b] = {**{f"vanilla_{q}": over(f["vanilla", q], f["vanilla", 100]) for q in (20, 40, 60)
                     if ("vanilla", q) in f},
                  "nested_first": over(f["nested", 20], f["nested", 100]),
                  "early": over(f["nested", 20], f["vanilla", 20]),
                  "gap_closed": over(f["vanilla", 20] - f["nested", 20], f["vanilla", 20] - f["vanilla", 100])}
    return out


def curve(points, key: str = "fid") -> list[tuple[int, float, float]]:
    """Figure 2's curve [(nfe, mean, sd)] over seeds, of dense rows or (budget, sampler)-filtered table rows."""
    by = defaultdict(list)
    for r in points:
        if r.get(key) is not None:
            by[r["nfe"]].append(r[key])
    return [(k, *mean_sd(v)) for k, v in sorted(by.items())]


# ----------------------------------------------------------------------------------------------------------------
# Tables (pandas)
# ----------------------------------------------------------------------------------------------------------------


def table(rows, paper: dict | None = None, key: str = "fid", digits: int = 1):
    """Table 1's layout as a DataFrame: one row per (budget, percent), ours (mean ± sd) and the paper's side by side."""
    import pandas as pd

    from .style import pm

    paper = paper_table() if paper is None else paper
    out = []
    for b in sorted({r["budget"] for r in rows}):
        for q in sorted({r["percent"] for r in rows if r["budget"] == b}):
            van, nd = cell(rows, b, q, "vanilla", key), cell(rows, b, q, "nested", key)
            if not van or not nd:
                continue
            theirs = paper.get((b, q))
            out.append({("", "budget"): b, ("", "%"): q, ("", "NFE"): b * q // 100,
                        ("ours", "vanilla"): pm(van, digits), ("ours", "nested"): pm(nd, digits),
                        ("ours", "nested / vanilla"): f"{np.mean(nd) / np.mean(van):.3f}",
                        ("paper", "vanilla"): f"{theirs[0]:.2f}" if theirs else "–",
                        ("paper", "nested"): f"{theirs[1]:.2f}" if theirs else "–",
                        ("paper", "nested / vanilla"): f"{theirs[1] / theirs[0]:.3f}" if theirs else "–"})
    df = pd.DataFrame(out)
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df.set_index([("", "budget"), ("", "%"), ("", "NFE")]).rename_axis(["budget", "%", "NFE"])


def kid_accuracy_table(rows):
    """Table 1's KID x 1000 and class accuracy of each (budget, percent), both samplers, mean ± sd over seeds."""
    import pandas as pd

    from .style import pm

    out = []
    for b in sorted({r["budget"] for r in rows}):
        for q in sorted({r["percent"] for r in rows if r["budget"] == b}):
            row = {("", "budget"): b, ("", "%"): q}
            for s in SAMPLERS:
                row["KID × 1000", s] = pm(cell(rows, b, q, s, "kid"), 2, scale=1000)
            for s in SAMPLERS:
                row["class accuracy", s] = pm(cell(rows, b, q, s, "class_accuracy"), 3)
            out.append(row)
    df = pd.DataFrame(out)
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    return df.set_index([("", "budget"), ("", "%")]).rename_axis(["budget", "%"])


def strength(sources: dict[str, tuple[list, list[str]]], judge_names: dict | None = None) -> list[dict]:
    """The effect (`effect`) of every source and judge: {name: (rows, keys)} -> one row per (source, judge,
    budget); a source whose name starts with "paper" is judged by Inception."""
    names = {**JUDGE_NAMES, **(judge_names or {})}
    out = []
    for name, (rows, keys) in sources.items():
        for key in keys:
            for b, e in effect(rows, key).items():
                out.append({"source": name, "judge": "Inception" if name.startswith("paper") else names[key],
                            "budget": b, **e})
    return out


def strength_table(rows):
    """The strength rows (`strength`) as a table: early ratio, final ratio, gap closed, vanilla better from."""
    import pandas as pd

    return pd.DataFrame(
        [{"source": r["source"], "judge": r["judge"], "budget": r["budget"], "early ratio (20 %)": f"{r['early']:.3f}",
          "final ratio": f"{r['final']:.2f}", "gap closed": f"{r['gap_closed']:.3f}",
          "vanilla better from": f"{r['vanilla_better_from']} %" if r["vanilla_better_from"] else "never"}
         for r in rows]).set_index(["source", "judge", "budget"])


# ----------------------------------------------------------------------------------------------------------------
# Committed sweeps (scripts/sweep.py output under results/)
# ----------------------------------------------------------------------------------------------------------------


def setting_of(p: dict) -> str:
    """A sweep's setting in words, from its parameters (Table 1's model, preset, guidance, outer steps)."""
    words = "unconditional (null class)" if p.get("unconditional") else f"guidance {p['guidance']:g}"
    return f"{p['model']}, {p['preset']} preset, {words}, {p['outer']} outer"


def load_sweeps(root: str | Path, model: str | None = None) -> dict[str, dict]:
    """{folder name: sweep} for every folder of `root` holding scripts/sweep.py results of Table 1 (one file per seed,
    or one), of `model` only when given: rows, floor, parameters, setting, n, seeds and each file's run record."""
    groups = {}  # files named seed*.json or results.json form their folder's sweep; any other file is one of its own
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []:
        for f in sorted(folder.glob("*.json")):
            r = json.loads(f.read_text())
            if isinstance(r, dict) and "rows" in r.get("results", {}):  # other results (e.g. lists) are not sweeps
                if model is not None and r["parameters"].get("model") != model:
                    continue
                key = folder.name if f.stem.startswith("seed") or f.stem == "results" else f"{folder.name}/{f.stem}"
                groups.setdefault(key, []).append(r)
    sweeps = {}
    for key, records in groups.items():
        p = records[0]["parameters"]
        sweeps[key] = {
            "rows": [row for r in records for row in r["results"]["rows"]],
            "floor": [f for r in records for f in r["results"]["floor"]],
            "parameters": p, "setting": setting_of(p), "n": p["n"],
            "seeds": sorted({row["seed"] for r in records for row in r["results"]["rows"]}),
            "runs": [{k: r["results"].get(k) for k in ("commit", "machine", "processes", "device", "time")}
                     for r in records],
        }
    return sweeps


def sweep_model(model: str) -> str:
    """The model whose committed sweeps a Table 1 chapter shows beside its run: a bundled model's own, a hub model's
    bundled stand-in, and for a saved DiTPipeline folder (a copy of DiT-XL/2) DiT-XL/2's stand-in."""
    entry = models.REGISTRY.get(model)
    if entry is None:
        return XL_STAND_IN
    return entry.stand_in or entry.name


def command_of(p: dict, seed="S") -> str:
    """A sweep's scripts/sweep.py command line, rebuilt from its parameters (one seed)."""
    cmd = (f"scripts/sweep.py --budgets {' '.join(map(str, p['budgets']))} --percents "
           f"{' '.join(map(str, p['percents']))} --samples {p['n']} --seeds {seed} --batch {p['batch']} --preset {p['preset']}")
    if p.get("model", "mnist-dit") != "mnist-dit":
        cmd = cmd.replace("scripts/sweep.py", f"scripts/sweep.py --model {p['model']}", 1)
    cmd += " --unconditional" if p.get("unconditional") else f" --guidance {p['guidance']:g}"
    return cmd + f" --judges {' '.join(p.get('judges', ['classifier']))}"


def covers_table1(s: dict) -> bool:
    """Whether a sweep holds every (budget, percent) of the paper's Table 1."""
    have = {(r["budget"], r["percent"]) for r in s["rows"]}
    return all((b, q) in have for b in BUDGETS for q in PERCENTS)


def table_sweep(sweeps: dict[str, dict], guidance: float = 1.5, outer: int = 5) -> str | None:
    """The sweep that Table 1 is read from: the paper's setting (every cell, paper preset, conditional at `guidance`,
    `outer` outer steps) with the most samples per cell, then the most seeds; None when none is committed."""
    like = {k: s for k, s in sweeps.items() if covers_table1(s) and s["parameters"]["preset"] == "paper"
            and not s["parameters"].get("unconditional") and s["parameters"]["guidance"] == guidance
            and s["parameters"]["outer"] == outer}
    return max(like, key=lambda k: (like[k]["n"], len(like[k]["seeds"])), default=None)


def provenance(sweeps: dict[str, dict], table_key: str | None) -> list[dict]:
    """One line per committed sweep: folder, setting, samples, seeds, machine, commit, wall time per file."""
    out = []
    for key, s in sweeps.items():
        machine = s["runs"][0]["machine"] or {}
        wall = [r["time"]["wall_s"] for r in s["runs"] if r.get("time")]
        out.append({"folder": f"results/{key}" + (" (Table 1)" if key == table_key else ""),
                    "setting": s["setting"], "n per cell": f"{s['n']:,}", "seeds": ", ".join(map(str, s["seeds"])),
                    "machine": machine.get("gpu") or machine.get("cpu"),
                    "commit": ", ".join(dict.fromkeys(r["commit"][:7] + ("+dirty" if "dirty" in r["commit"] else "")
                                                      for r in s["runs"])),
                    "wall time per file": ", ".join(f"{w:.0f} s" for w in wall)})
    return out


def densest(sweeps: dict[str, dict], setting: str, budget: int, sampler: str) -> list[dict]:
    """Figure 2's committed points: the rows of one budget and sampler from the sweep of this setting with the most
    distinct NFEs (a dense sweep, when one is committed, over Table 1's five stops)."""
    rows_b = [[r for r in s["rows"] if r["budget"] == budget and r["sampler"] == sampler]
              for s in sweeps.values() if s["setting"] == setting]
    return max(rows_b, key=lambda rs: len({r["nfe"] for r in rs}), default=[])


# ----------------------------------------------------------------------------------------------------------------
# The in-book run: the model, its labels, its judges
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What a Table 1 chapter samples: the DiTPipeline, the classes it asks for, its guidance and preset, and the
    dataset of its judge (None for a model without a bundled judge: hub models and saved folders)."""

    model: str
    pipe: Any
    classes: int
    guidance: float
    preset: str = "paper"
    judge: str | None = None  # the registry name of its judge (a bundled classifier), if any
    dataset: str | None = None  # that judge's dataset (nestedlib.data.split): "mnist", "emoji"

    def labels(self, indices) -> list[int]:
        """Sample i's class: `sweep.labels_of` with the judge's dataset (scripts/sweep.py's rule)."""
        return sweep.labels_of(indices, self.classes, self.dataset)

    def net(self, indices):
        """The library's model of one micro-batch, asking for its samples' classes (`pipelines.dit_model`)."""
        from .pipelines import dit_model

        return dit_model(self.pipe, self.labels(indices), self.guidance, self.model, self.preset, classes=self.classes)

    @property
    def balanced(self) -> bool:
        """Whether the label plan holds every class equally often (MNIST's i % 10), so floors are drawn that way."""
        return self.dataset is not None and data.is_balanced(self.dataset)


def setup(model: str, device="cpu", guidance_scale: float | None = None, preset: str = "paper", pipe=None) -> Setup:
    """A Table 1 chapter's model: a registry name (bundled, or from the hub online) or a saved DiTPipeline folder;
    `pipe` gives the loaded pipeline instead (e.g. a freshly built one). Guidance None: the registry's default (1.5
    for a folder, the paper's)."""
    if pipe is None:
        if Path(str(model)).is_dir():  # a saved DiTPipeline folder, e.g. a local copy of DiT-XL/2
            from diffusers import DiTPipeline

            pipe = DiTPipeline.from_pretrained(model).to(device)
            pipe.set_progress_bar_config(disable=True)
        else:
            pipe = models.load(model, device=device)  # bundled, or from the hub (online only)
    # classes asked for and guidance: the registry entry's (the bundled DiTs' label tables have 1,000 rows, as
    # DiT-XL/2's, so that the null class is 1000 as diffusers expects); a saved folder: every class before the null
    entry = models.REGISTRY.get(model)
    classes = entry.classes if entry else int(pipe.transformer.config.num_embeds_ada_norm)
    scale = guidance_scale if guidance_scale is not None else (entry.guidance if entry else 1.5)
    judge = entry.judge if entry else None
    dataset = models.info(judge).data if judge else None
    return Setup(str(model), pipe, classes, scale, preset, judge if dataset else None, dataset)


def load_reference(path, size: int, model: str = "this model") -> torch.Tensor:
    """Real images for a model without a bundled judge: a .pt tensor (N, 3, H, W) in [-1, 1], or a folder of image
    files (centre-cropped), resized to the generated size."""
    if path is None:
        raise ValueError(f"model {model!r} needs real images to compare with: pass reference= a folder of images "
                         "(e.g. ImageNet validation images for DiT-XL/2) or a .pt tensor (N, 3, H, W) in [-1, 1]")
    path = Path(path)
    if path.suffix == ".pt":
        x = torch.load(path).float()
    else:
        from PIL import Image

        files = sorted(f for f in path.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise ValueError(f"{path} holds no .png or .jpg images; pass a folder of real images or a .pt tensor")
        arrays = []
        for f in files:
            im = Image.open(f).convert("RGB")
            side = min(im.size)  # centre crop, then resize to the generated size
            im = im.crop(((im.width - side) // 2, (im.height - side) // 2, (im.width + side) // 2,
                          (im.height + side) // 2)).resize((size, size), Image.BICUBIC)
            arrays.append(torch.from_numpy(np.asarray(im)).permute(2, 0, 1))
        x = torch.stack(arrays).float() / 127.5 - 1
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear") if x.shape[-1] != size else x


class Judges(dict):
    """Table 1's judges by feature space ({name: metrics.Judge}, the real images' features computed once each), the
    main one (whose FID and KID are a row's "fid" and "kid") first; a bundled judge also gives class accuracy."""

    def __init__(self, judges: dict, main: str, classifier=None, dataset: str | None = None):
        super().__init__(judges)
        self.main, self.classifier, self.dataset = main, classifier, dataset
        self.order = [main] + [j for j in judges if j != main]  # "fid" is the main judge's, "fid_<name>" the others'

    def scores(self, x: torch.Tensor, labels, seed: int, full: bool = True) -> dict:
        """A row's metrics: the main judge's FID; full=True also its KID, the others' FID and KID, class accuracy."""
        if not full:
            return {"fid": self[self.main].fid(x)}
        out = {}
        for j in self.order:
            s = self[j].scores(x, seed=seed)  # phi(x) once for FID and KID
            out.update({"fid": s["fid"], "kid": s["kid"], "kid_std": s["kid_std"]} if j == self.main else
                       {f"fid_{j}": s["fid"], f"kid_{j}": s["kid"]})
        out["class_accuracy"] = self["classifier"].accuracy(x, labels) if self.classifier is not None else None
        return out

    def floors(self, n: int, seeds, balanced: bool) -> list[dict]:
        """The real-vs-real floor per seed (`metrics.real_floor`: n training images against every held-out one),
        class-balanced where the samples are; [] for a judge without a dataset."""
        if self.classifier is None or self.dataset is None:
            return []
        n_real = len(self[self.main].real)
        classes = int(data.split(self.dataset, "heldout")[1].max()) + 1
        return [{"seed": s, **metrics.real_floor(self.classifier, n, seed=s, n_real=n_real,
                                                  balanced=balanced and n % classes == 0, dataset=self.dataset)}
                for s in seeds]


def judges_for(su: Setup, judge: str = "auto", reference=None, size: int | None = None, device=None) -> Judges:
    """The judges of a Table 1 run: a bundled judge's classifier features, logits and pooled pixels against its
    dataset's held-out images; otherwise Inception (2048 features, online) or pooled pixels against `reference`."""
    device = device if device is not None else su.pipe.transformer.device
    if su.dataset is not None:
        real = data.split(su.dataset, "heldout")[0].to(device)
        classifier = models.load(su.judge, device=device)
        return Judges({name: metrics.Judge(classifier, real, name) for name in OFFLINE_JUDGES},
                      "classifier" if judge == "auto" else judge, classifier, su.dataset)
    real = load_reference(reference, size, su.model).to(device)
    main = "inception" if judge == "auto" else judge
    return Judges({main: metrics.Judge(None, real, main)}, main)


def score(images: dict, judges: Judges, labels, percents: Sequence[int], n: int) -> tuple[list[dict], list[dict]]:
    """Table 1's rows and Figure 2's dense points of an in-book run: images {(budget, seed): {(kind, nfe): x}} ->
    rows (every stop, both samplers, full metrics) and dense (every kept preview, the main judge's FID)."""
    rows, dense = [], []
    for (b, s), imgs in images.items():
        for name in SAMPLERS:
            for q in percents:
                k = b * q // 100
                held = held_at(imgs, name, k)  # the preview a user stopping at k holds
                rows.append({"budget": b, "percent": q, "nfe": k, "preview_nfe": held, "sampler": name, "seed": s,
                             "n": n, **judges.scores(imgs[name, held], labels, s, full=True)})
        for (kind, k), x in sorted(imgs.items()):
            dense.append({"budget": b, "seed": s, "kind": kind, "nfe": k, **judges.scores(x, labels, s, full=False)})
    return rows, dense


def kid_of_real_draws(judge: metrics.Judge, dataset: str, n: int, balanced: bool, draws: int) -> np.ndarray:
    """KID x 1000 of `draws` sets of n real training images against the judge's real set: drawn at random, or with
    each class as often as `data.label_plan` asks for it (MNIST: n / 10 of each digit, as the generated sets)."""
    x_train, y_train = data.split(dataset, "train")
    phi = torch.cat(judge.embed(x_train))  # features of every training image, once
    counts = torch.bincount(data.label_plan(dataset, n), minlength=int(y_train.max()) + 1)
    out = []
    for d in range(draws):
        g = torch.Generator().manual_seed(10_000 + d)
        if balanced:
            pick = torch.cat([torch.nonzero(y_train == c).flatten()[torch.randperm(int((y_train == c).sum()),
                                                                                   generator=g)[: int(counts[c])]]
                              for c in range(len(counts))])
        else:
            pick = torch.randperm(len(x_train), generator=g)[:n]
        out.append(1000 * judge._kid_of([phi[pick.to(phi.device)]], seed=d)["kid"])
    return np.array(out)


def kid_bias(judge: metrics.Judge, dataset: str, sizes=((30, 100), (100, 100), (1000, 20))) -> list[dict]:
    """KID's small-sample offset: mean, standard error and sd of `kid_of_real_draws` per (n, draws), random and
    drawn as the samples ask for their classes."""
    planned = "class-balanced" if data.is_balanced(dataset) else "in the samples' class proportions"
    out = []
    for m, draws in sizes:
        for balanced in (False, True):
            k = kid_of_real_draws(judge, dataset, m, balanced, draws)
            out.append({"n": m, "draw": planned if balanced else "random", "draws": draws,
                        "mean": float(k.mean()), "se": float(k.std(ddof=1) / np.sqrt(draws)),
                        "sd": float(k.std(ddof=1))})
    return out


# ----------------------------------------------------------------------------------------------------------------
# What the samplers return: decoded previews, Figure 4's inner runs, the outer x inner trade-off
# ----------------------------------------------------------------------------------------------------------------


def held_at(images: dict, kind: str, nfe: int) -> int:
    """The NFE of the preview a user stopping at `nfe` holds: the last kept preview of `kind` at or before it."""
    return max(m for k, m in images if k == kind and m <= nfe)


class Previews:
    """Decoded previews (on the CPU) of one budget's in-book run, micro-batch by micro-batch: ("vanilla", k) at every
    multiple of `every` and every Table 1 stop, ("nested", k) at every outer step, and ("inner", k): the inner
    process's own x̂'_0 (the network mean at its current step, depth-1 events) every `every` NFEs."""

    def __init__(self, budget: int, percents: Sequence[int], every: int):
        self.every = every
        self.stops = sorted(set(range(every, budget + 1, every)) | {budget * q // 100 for q in percents})
        self.parts = defaultdict(list)

    def add(self, net, results: dict) -> None:
        """Keep the previews of one micro-batch's `sweep.sample_batch` results {"vanilla", "nested"}."""
        for name, res in results.items():
            if name == "vanilla":
                for k in self.stops:  # one step is one NFE: the preview held at k is the event of step k
                    self.parts[name, k].append(net.decode(res.at(k).x0).cpu())
            else:
                for ev in res.previews:
                    self.parts[name, ev.nfe].append(net.decode(ev.x0).cpu())
                for ev in res.inner:
                    if ev.depth == 1 and ev.nfe % self.every == 0:
                        self.parts["inner", ev.nfe].append(net.decode(ev.x0).cpu())

    def images(self) -> dict:
        """{(kind, nfe): images (n, C, H, W)} in sample order."""
        return {k: torch.cat(v) for k, v in self.parts.items()}


def inner_drops(dense: list[dict], budget: int, outer: int, every: int) -> list[dict]:
    """Figure 4's inner runs: per outer step, the mean FID of its first inner preview and of its last (the next outer
    preview); None where the run kept no such point."""
    pts = dict((k, m) for k, m, _ in curve([d for d in dense if d["budget"] == budget and d["kind"] == "inner"]))
    step = budget // outer
    return [{"outer_step": j, "first_nfe": j * step + every, "last_nfe": (j + 1) * step,
             "first": pts.get(j * step + every), "last": pts.get((j + 1) * step)} for j in range(outer)]


class Tradeoff:
    """The paper's R_ND = |outer| / |inner| at a fixed total of NFEs: each split's final samples and the preview held
    at 20 % of the budget, collected micro-batch by micro-batch from the chapter's own nested runs."""

    def __init__(self, nfe: int, outers: Sequence[int]):
        self.nfe = nfe
        self.outers = [o for o in outers if nfe % o == 0]  # the splits that spend the budget exactly
        self.final, self.early, self.first = defaultdict(list), defaultdict(list), {}

    def add(self, outer: int, net, result) -> None:
        """Keep one micro-batch of the split with `outer` outer steps (its `run` result)."""
        self.first[outer] = result.previews[0].nfe
        self.final[outer].append(net.decode(result.x0).cpu())
        if self.first[outer] <= self.nfe // 5:
            self.early[outer].append(net.decode(result.at(self.nfe // 5).x0).cpu())

    def rows(self, judge: metrics.Judge) -> list[dict]:
        """One row per split: outer, inner, R_ND, the first preview's NFE, FID at 20 % (None: nothing yet), final FID."""
        return [{"outer": o, "inner": self.nfe // o, "r_nd": o / (self.nfe // o), "first_preview_nfe": self.first[o],
                 "final": judge.fid(torch.cat(self.final[o])),
                 "at_20_percent": judge.fid(torch.cat(self.early[o])) if self.early[o] else None}
                for o in self.outers]


def tradeoff_table(rows):
    """The trade-off rows (`Tradeoff.rows`) as a table."""
    import pandas as pd

    return pd.DataFrame(
        [{"outer": r["outer"], "inner": r["inner"], "R_ND": f"{r['r_nd']:.3g}", "first preview (NFE)": r["first_preview_nfe"],
          "FID at 20 %": f"{r['at_20_percent']:.1f}" if r["at_20_percent"] is not None else "no preview yet",
          "final FID": f"{r['final']:.1f}"} for r in rows]).set_index("outer")


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------


def grid_scale(images: torch.Tensor, width: int = 160) -> int:
    """The integer nearest-neighbour upscaling that brings one image to at least `width` / 5 pixels (32 px: 1)."""
    return max(1, -(-width // 5 // images.shape[-1]))


def preview_grid(imgs: dict, budget: int, name: str, percent: int, k: int = 10) -> tuple[np.ndarray, int]:
    """Figures 3/6's panel: the first k previews held at `percent` of the budget, as one uint8 grid (H, W, C) in
    rows of 5 (colour for RGB images, nearest-neighbour upscaled), and the NFE of the preview held."""
    held = held_at(imgs, name, budget * percent // 100)
    x = imgs[name, held][:k]
    return image_grid(x, nrow=min(k, 5), scale=grid_scale(x)), held


def sample_figure(images: dict, budgets: Sequence[int], seed: int, percents: Sequence[int], k: int = 10,
                  panel: tuple[float, float] = (1.9, 1.45)):
    """Figures 3 and 6: rows vanilla and nested for each budget, columns the stops of the table (one seed's run)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2 * len(budgets), len(percents), figsize=(panel[0] * len(percents),
                                                                       panel[1] * 2 * len(budgets)), squeeze=False)
    for i, b in enumerate(budgets):
        for col, q in enumerate(percents):
            for j, name in enumerate(SAMPLERS):
                grid, held = preview_grid(images[b, seed], b, name, q, k)
                ax = axes[2 * i + j, col]
                if grid.shape[-1] == 1:  # grey digits
                    ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                else:  # colour
                    ax.imshow(grid, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{name}, {held}/{b}", fontsize=8)
    fig.tight_layout()
    return fig


def _errorbars(ax, pts, **kw) -> None:
    if pts:
        k, m, sd = map(np.array, zip(*pts))
        ax.errorbar(k, m, yerr=sd, marker="o", ms=3, capsize=2, **kw)


def figure2(budgets: Sequence[int], dense: list[dict], n: int, judge: str, floor: float | None = None,
            committed: Callable[[int, str], list] | None = None, committed_floor: float | None = None):
    """Figure 2: FID against NFEs spent for every budget; top row the committed sweep's points (`committed(budget,
    sampler)` -> rows), bottom row the in-book run (vanilla every `every` NFEs, nested at each outer step)."""
    import matplotlib.pyplot as plt

    from .style import colour

    top = committed is not None
    fig, axes = plt.subplots(2 if top else 1, len(budgets), figsize=(3.2 * len(budgets), 6.0 if top else 3.0),
                             squeeze=False, sharey="row")
    for col, b in enumerate(budgets):
        panels = [("GPU sweep", axes[0, col], {s: curve(committed(b, s)) for s in SAMPLERS}, committed_floor)] if top else []
        panels.append((f"in-book, n = {n}", axes[-1, col],
                       {s: curve([d for d in dense if d["budget"] == b and d["kind"] == s]) for s in SAMPLERS}, floor))
        for title, ax, curves, fl in panels:
            for s, pts in curves.items():
                _errorbars(ax, pts, color=colour(s), label=s, drawstyle="steps-post" if s == "nested" else "default")
            if fl is not None:
                ax.axhline(fl, color=colour("floor"), ls=":", lw=1, label="real vs real")
            ax.set_yscale("log")
            ax.set_title(f"{b} NFEs ({title})", fontsize=9)
            ax.set_xlabel("NFEs spent")
            ax.set_xlim(0, b + 2)
        axes[-1, 0].set_ylabel(f"FID ({judge})")
        if top:
            axes[0, 0].set_ylabel(f"FID ({judge})")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def figure4(dense: list[dict], budget: int, outer: int, n: int, seeds, judge: str, floor: float | None = None):
    """Figure 4: the inner previews' FID every few NFEs beside the outer previews and vanilla's, for one budget."""
    import matplotlib.pyplot as plt

    from .style import colour

    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    labels = {"inner": "inner previews x̂′0", "nested": "outer previews (nested)", "vanilla": "vanilla previews"}
    for kind in ("vanilla", "inner", "nested"):
        _errorbars(ax, curve([d for d in dense if d["budget"] == budget and d["kind"] == kind]), color=colour(kind),
                   label=labels[kind])
    if floor is not None:
        ax.axhline(floor, color=colour("floor"), ls=":", lw=1, label="real vs real")
    ax.set_yscale("log")
    ax.set_xlabel("NFEs spent")
    ax.set_ylabel(f"FID ({judge})")
    ax.set_title(f"{budget} NFEs, {outer} outer steps, n = {n}, seeds {list(seeds)}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def dit_xl2_flops() -> tuple[int, int]:
    """Floating-point operations of one DiT-XL/2 forward of one image (diffusers' facebook/DiT-XL-2-256 config) and
    its parameter count, by torch's FlopCounterMode on a model built on the meta device (no weights, no memory)."""
    from diffusers import DiTTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                    num_layers=28, sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
                                    norm_num_groups=32)
        x, t = torch.zeros(1, 4, 32, 32), torch.zeros(1, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            net(x, timestep=t, class_labels=t)
    return counter.get_total_flops(), sum(p.numel() for p in net.parameters())
