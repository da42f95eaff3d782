"""nestedlib.table1, the code the Table 1 chapters share: its pure functions on rows with known answers (the paper's
own Table 1 among them), the committed-sweep loader, and the in-book path on tiny random DiTs of each registry
DiT's shape (digits: grey, i % 10 labels, balanced floors; emoji: colour, held-out proportions, random floors)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nestedlib import data, models, sweep, table1

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bundles as B  # noqa: E402

emoji_fetched = all((data.emoji_dir() / f"emoji-datasource-{v}-{data.EMOJI_VERSION}.tgz").is_file()
                    for v in data.EMOJI_VENDORS) or (data.emoji_dir() / data.EMOJI_ARRAY).is_file()
needs_emoji = pytest.mark.skipif(not emoji_fetched, reason="emoji packages not fetched: bash scripts/fetch_emoji.sh")

# vanilla and nested FID at 20, 40, 60, 80, 100 % of one budget, two seeds (seed 1 = seed 0 + 2)
VAN, ND = [100.0, 50.0, 20.0, 10.0, 8.0], [20.0, 15.0, 12.0, 10.0, 9.0]


def synthetic(budget: int = 100) -> list[dict]:
    return [{"budget": budget, "percent": q, "nfe": budget * q // 100, "sampler": s, "seed": seed,
             "fid": f + 2 * seed, "kid": 0.001 * (f + 2 * seed), "class_accuracy": 0.5 + 0.1 * seed}
            for seed in (0, 1) for s, fids in (("vanilla", VAN), ("nested", ND)) for q, f in zip(table1.PERCENTS, fids)]


def test_cell_ratios_and_effect_on_rows_with_known_answers():
    rows = synthetic()
    assert table1.cell(rows, 100, 20, "vanilla") == [100.0, 102.0]  # in seed order
    assert table1.cell(rows, 100, 20, "nested", "class_accuracy") == pytest.approx([0.5, 0.6])
    r = table1.ratios(rows)
    assert r[100, 20] == pytest.approx(21 / 101) and r[100, 100] == pytest.approx(10 / 9)
    e = table1.effect(rows)[100]
    assert e["early"] == pytest.approx(21 / 101) and e["final"] == pytest.approx(10 / 9)
    assert e["gap_closed"] == pytest.approx((101 - 21) / (101 - 9))
    assert e["vanilla_better_from"] == 80  # 11 <= 11 at 80 %: vanilla no worse from there
    never = [dict(x, fid=x["fid"] + (100 if x["sampler"] == "vanilla" else 0)) for x in rows]
    assert table1.effect(never)[100]["vanilla_better_from"] is None
    assert table1.effect([x for x in rows if x["percent"] != 100]) == {}  # no final stop: no effect to state
    assert table1.mean_sd([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2))) and table1.mean_sd([5.0]) == (5.0, 0.0)


def test_the_papers_table_gives_the_papers_ratios():
    paper = table1.paper_table()
    assert len(paper) == 15 and paper[100, 20] == (282.89, 13.03) and paper[250, 100] == (2.16, 2.28)
    rows = table1.paper_rows(paper)
    assert table1.ratios(rows) == {k: pytest.approx(nd / van) for k, (van, nd) in paper.items()}
    e = table1.effect(rows)
    assert e[100]["early"] == pytest.approx(13.03 / 282.89) and e[250]["early"] == pytest.approx(3.57 / 284.13)
    assert e[100]["gap_closed"] == pytest.approx((282.89 - 13.03) / (282.89 - 2.44))
    assert {b: x["vanilla_better_from"] for b, x in e.items()} == {100: 100, 150: 100, 250: 100}
    assert round(e[100]["early"] / e[250]["early"], 1) == 3.7  # the early ratio shrinks with the budget


def test_table_layout():
    df = table1.table(synthetic())
    assert list(df.index.names) == ["budget", "%", "NFE"] and len(df) == 5
    assert list(df.columns) == [("ours", "vanilla"), ("ours", "nested"), ("ours", "nested / vanilla"),
                                ("paper", "vanilla"), ("paper", "nested"), ("paper", "nested / vanilla")]
    top = df.loc[(100, 20, 20)]
    assert top["ours", "vanilla"] == "101.0\u00a0±\u00a01.4" and top["ours", "nested / vanilla"] == f"{21 / 101:.3f}"
    assert top["paper", "vanilla"] == "282.89" and top["paper", "nested / vanilla"] == f"{13.03 / 282.89:.3f}"
    assert (table1.table(synthetic(120)).loc[(120, 20, 24)]["paper"] == "–").all()  # no paper cell: a dash
    kid = table1.kid_accuracy_table(synthetic())
    assert kid.loc[(100, 20)]["KID × 1000", "vanilla"] == "101.00\u00a0±\u00a01.41"
    assert kid.loc[(100, 20)]["class accuracy", "nested"] == "0.550\u00a0±\u00a00.071"


def test_curve_and_strength():
    pts = [{"nfe": 10, "fid": 4.0}, {"nfe": 10, "fid": 6.0}, {"nfe": 20, "fid": 1.0}, {"nfe": 30, "fid": None}]
    assert table1.curve(pts) == [(10, 5.0, pytest.approx(math.sqrt(2))), (20, 1.0, 0.0)]
    rows = table1.strength({"paper": (table1.paper_rows(), {"fid": "Inception"}),
                            "ours": (synthetic(), {"fid": "classifier features"})})
    assert [(r["source"], r["judge"], r["budget"]) for r in rows] == [
        ("paper", "Inception", 100), ("paper", "Inception", 150), ("paper", "Inception", 250),
        ("ours", "classifier features", 100)]
    df = table1.strength_table(rows)
    assert df.loc[("ours", "classifier features", 100)]["vanilla better from"] == "80 %"


def _sweep_file(folder: Path, name: str, model: str, n: int, seed: int, guidance: float = 1.5, budgets=(100, 150, 250)):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(r, budget=b, seed=seed) for b in budgets for r in synthetic(b) if r["seed"] == 0]
    params = {"model": model, "preset": "paper", "guidance": guidance, "outer": 5, "n": n, "budgets": list(budgets),
              "percents": list(table1.PERCENTS), "batch": 50, "judges": ["classifier"]}
    (folder / name).write_text(json.dumps({"parameters": params, "results": {
        "rows": rows, "floor": [{"seed": seed, "fid": 1.0, "n": n}], "commit": "abc1234def+dirty", "machine": {"gpu": "H100"},
        "processes": 8, "time": {"wall_s": 12.0}}}))


def test_load_sweeps_groups_seed_files_and_keeps_one_model(tmp_path):
    for s in (0, 1):
        _sweep_file(tmp_path / "big", f"seed{s}.json", "mnist-dit", 1000, s)
    _sweep_file(tmp_path / "variants", "guid3.json", "mnist-dit", 4000, 0, guidance=3.0)
    _sweep_file(tmp_path / "colour", "results.json", "emoji-dit", 5000, 0)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.json").write_text(json.dumps({"parameters": {}, "results": {"curves": []}}))
    sweeps = table1.load_sweeps(tmp_path, model="mnist-dit")
    assert set(sweeps) == {"big", "variants/guid3"} and sweeps["big"]["seeds"] == [0, 1]
    assert len(sweeps["big"]["rows"]) == 2 * 30 and len(sweeps["big"]["floor"]) == 2
    assert set(table1.load_sweeps(tmp_path)) == {"big", "variants/guid3", "colour"}
    assert table1.table_sweep(sweeps) == "big"  # guidance 3 is not the paper's setting, however many samples
    assert table1.table_sweep({}) is None
    assert table1.load_sweeps(tmp_path / "missing") == {}
    assert sweeps["big"]["setting"] == "mnist-dit, paper preset, guidance 1.5, 5 outer"
    assert table1.command_of(sweeps["big"]["parameters"], 0) == (
        "scripts/sweep.py --budgets 100 150 250 --percents 20 40 60 80 100 --samples 1000 --seeds 0 --batch 50 "
        "--preset paper --guidance 1.5 --judges classifier")
    colour = table1.load_sweeps(tmp_path, model="emoji-dit")["colour"]
    assert table1.command_of(colour["parameters"]).startswith("scripts/sweep.py --model emoji-dit --budgets")
    line = table1.provenance(sweeps, "big")[0]
    assert line["folder"] == "results/big (Table 1)" and line["commit"] == "abc1234+dirty" and line["machine"] == "H100"
    assert len(table1.densest(sweeps, sweeps["big"]["setting"], 100, "nested")) == 2 * 5


def test_sweep_model_of_each_kind_of_model(tmp_path):
    assert table1.sweep_model("mnist-dit") == "mnist-dit" and table1.sweep_model("emoji-dit") == "emoji-dit"
    assert table1.sweep_model("facebook/DiT-XL-2-256") == "mnist-dit"  # a hub model: its bundled stand-in's sweeps
    assert table1.sweep_model(str(tmp_path)) == "mnist-dit"  # a saved folder stands for DiT-XL/2


def test_the_committed_table1_sweep_is_the_chapters():
    sweeps = table1.load_sweeps(ROOT / "results", model="mnist-dit")
    assert table1.table_sweep(sweeps) == "table1-h100" and sweeps["table1-h100"]["n"] == 10000


class _Result:  # what run() returns, as far as Previews and Tradeoff read it
    def __init__(self, x0, previews, inner=()):
        self.x0, self.previews, self.inner = x0, previews, list(inner)

    def at(self, nfe):
        return max((p for p in self.previews if p.nfe <= nfe), key=lambda p: p.nfe)


class _Event:
    def __init__(self, nfe, value, depth=0):
        self.nfe, self.x0, self.depth = nfe, torch.full((2, 1, 2, 2), float(value)), depth


class _Net:
    def decode(self, z):
        return z * 2


def test_previews_keep_what_a_user_could_hold():
    held = table1.Previews(20, [20, 40, 60, 80, 100], every=10)
    assert held.stops == [4, 8, 10, 12, 16, 20]
    vanilla = _Result(None, [_Event(k, k) for k in range(1, 21)])
    nested = _Result(None, [_Event(4 * j, 100 + j) for j in range(1, 6)],
                     inner=[_Event(k, 200 + k, depth=1) for k in range(1, 21)] + [_Event(10, -1, depth=2)])
    held.add(_Net(), {"vanilla": vanilla, "nested": nested})
    held.add(_Net(), {"vanilla": vanilla, "nested": nested})  # a second micro-batch
    images = held.images()
    assert sorted(k for k in images if k[0] == "vanilla") == [("vanilla", k) for k in held.stops]
    assert sorted(k for k in images if k[0] == "inner") == [("inner", 10), ("inner", 20)]  # depth 1 only
    assert images["vanilla", 12].shape == (4, 1, 2, 2) and float(images["vanilla", 12][0, 0, 0, 0]) == 24.0
    assert float(images["inner", 10].max()) == 420.0  # decoded (x 2), not the depth-2 event
    assert table1.held_at(images, "nested", 11) == 8 and table1.held_at(images, "vanilla", 11) == 10


def _tiny_dit_pipe(builder):
    from diffusers import DDIMScheduler, DiTPipeline

    torch.manual_seed(0)
    vae = (B.build_emoji_vae if builder is B.build_emoji_dit else B.build_vae)(tiny=True).eval()
    pipe = DiTPipeline(transformer=builder(tiny=True).eval(), vae=vae, scheduler=DDIMScheduler(**B.ddpm_scheduler_config()))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _in_book(su, n, budget=10, seeds=(0,), trade_outers=(1, 5)):
    """The chapter's in-book run at tiny size: sampling as its cells do, then the library's scoring."""
    from nestedlib import run, sample_generators
    from nestedlib.pipelines import paper_samplers

    images = {}
    for s in seeds:
        held = table1.Previews(budget, table1.PERCENTS, every=2)
        for idx in sweep.chunks(n, 5):
            net = su.net(idx)
            held.add(net, sweep.sample_batch(net, budget, s, idx, outer=5, record_inner=True))
        images[budget, s] = held.images()
    judges = table1.judges_for(su, size=images[budget, seeds[0]]["vanilla", budget].shape[-1])
    rows, dense = table1.score(images, judges, su.labels(range(n)), table1.PERCENTS, n)
    splits = table1.Tradeoff(budget, trade_outers)
    for o in splits.outers:
        for idx in sweep.chunks(n, 5):
            net = su.net(idx)
            g = sample_generators(seeds[0], idx)
            splits.add(o, net, run(paper_samplers(net, budget, outer=o)["nested"], net.noise(g), generator=g))
    return images, judges, rows, dense, splits.rows(judges[judges.main])


def test_in_book_run_on_a_tiny_digit_dit():
    su = table1.setup("mnist-dit", pipe=_tiny_dit_pipe(B.build_dit))
    assert (su.classes, su.guidance, su.dataset, su.judge, su.balanced) == (10, 1.5, "mnist", "mnist-classifier", True)
    assert su.labels(range(12)) == [i % 10 for i in range(12)]
    images, judges, rows, dense, trade = _in_book(su, n=10)
    assert judges.main == "classifier" and judges.order == ["classifier", "logits", "pixels"]
    assert len(rows) == 10 and all(math.isfinite(r["fid"]) and r["class_accuracy"] is not None for r in rows)
    assert {"fid_logits", "kid_pixels"} <= set(rows[0])
    assert sorted({d["kind"] for d in dense}) == ["inner", "nested", "vanilla"]
    floors = judges.floors(10, [0, 1], balanced=su.balanced)
    assert [f["seed"] for f in floors] == [0, 1] and all(f["balanced"] and f["n_real"] == 1000 for f in floors)
    assert not any(f.get("balanced") for f in judges.floors(15, [0], balanced=su.balanced))  # 15 % 10: random draw
    assert [(t["outer"], t["first_preview_nfe"]) for t in trade] == [(1, 10), (5, 2)]
    assert trade[0]["at_20_percent"] is None and trade[1]["at_20_percent"] is not None
    grid, held = table1.preview_grid(images[10, 0], 10, "vanilla", 40, k=4)
    assert held == 4 and grid.shape[-1] == 1  # grey digits stay grey


@needs_emoji
def test_in_book_run_on_a_tiny_emoji_dit_is_judged_in_colour():
    """emoji-dit's path before the bundled model lands: a tiny random DiT of its shape, judged by the shipped
    emoji classifier against the held-out emoji, labels in their class proportions, floors drawn at random."""
    import matplotlib

    matplotlib.use("Agg")
    su = table1.setup("emoji-dit", pipe=_tiny_dit_pipe(B.build_emoji_dit))
    assert (su.classes, su.dataset, su.judge, su.balanced) == (9, "emoji", "emoji-classifier", False)
    assert su.labels(range(20)) == data.label_plan("emoji", 20).tolist()
    assert su.labels(range(20)) != [i % 9 for i in range(20)]
    images, judges, rows, dense, trade = _in_book(su, n=10)
    assert images[10, 0]["nested", 10].shape == (10, 3, 32, 32)
    assert len(judges["classifier"].real) == len(data.split("emoji", "heldout")[0])
    assert all(math.isfinite(r["fid"]) and 0 <= r["class_accuracy"] <= 1 for r in rows)
    floors = judges.floors(18, [0], balanced=su.balanced)  # 18 is a multiple of 9, yet the plan is not balanced
    assert floors[0]["n"] == 18 and not floors[0].get("balanced")
    grid, _ = table1.preview_grid(images[10, 0], 10, "nested", 100, k=10)
    assert grid.shape == (2 * 33 + 1, 5 * 33 + 1, 3)  # colour, 2 rows of 5, 32 px each at scale 1
    big, _ = table1.preview_grid({("nested", 10): images[10, 0]["nested", 10][:, :, ::4, ::4]}, 10, "nested", 100)
    assert big.shape[1] >= 160  # 8 px images are upscaled (nearest neighbour) to a size a reader can see
    fig = table1.sample_figure(images, [10], 0, table1.PERCENTS, 4)
    assert fig.axes[0].get_images()[0].get_array().shape[-1] == 3
    kb = table1.kid_bias(judges["classifier"], "emoji", sizes=((18, 3),))
    assert [r["draw"] for r in kb] == ["random", "in the samples' class proportions"]


def test_kid_draws_follow_the_label_plan():
    """MNIST: a planned draw of n is n / 10 digits of each class, as the chapter's samples ask for them."""
    from nestedlib import metrics

    clf = models.load("mnist-classifier")
    judge = metrics.Judge(clf, data.split("mnist", "heldout")[0][:200], "pixels")
    a = table1.kid_of_real_draws(judge, "mnist", 30, True, 2)
    assert a.shape == (2,) and np.isfinite(a).all()
    assert table1.kid_bias(judge, "mnist", sizes=((30, 2),))[1]["draw"] == "class-balanced"


def test_the_shape_of_the_curves_with_and_without_the_floor():
    paper = table1.shape(table1.paper_rows(table1.paper_table()))  # raw FIDs: the paper's Figure 2
    assert paper[100]["vanilla_20"] == pytest.approx(282.89 / 2.44) and paper[100]["vanilla_60"] == pytest.approx(65.22 / 2.44)
    assert paper[100]["nested_first"] == pytest.approx(13.03 / 3.18)
    assert paper[250]["early"] == pytest.approx(3.57 / 284.13)
    assert paper[100]["gap_closed"] == pytest.approx(table1.effect(table1.paper_rows(table1.paper_table()))[100]["gap_closed"])
    rows = synthetic()  # seed means: vanilla 101, 51, 21, 11, 9; nested 21, 16, 13, 11, 10
    s = table1.shape(rows, floor=5.0)[100]
    assert s["vanilla_20"] == pytest.approx(96 / 4) and s["vanilla_40"] == pytest.approx(46 / 4)
    assert s["nested_first"] == pytest.approx(16 / 5) and s["early"] == pytest.approx(16 / 96)
    assert s["gap_closed"] == pytest.approx((101 - 21) / (101 - 9))  # the floor cancels in the gap closed
    at_floor = table1.shape(rows, floor=9.0)[100]  # vanilla's final FID is the floor: no ratio to it
    assert at_floor["vanilla_20"] is None and at_floor["nested_first"] == pytest.approx(12 / 1)
