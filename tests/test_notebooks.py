"""Every chapter runs top to bottom through papermill with small parameters, and the claims it rests on hold."""
import json
import math
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

TABLE1_N = 20  # in-book Table 1 in CI: samples per cell (see test_table1_claims for the margins at this size)

# Small values for CI; the defaults in each notebook's parameters cell are what the rendered book shows.
SMALL = {
    "quickstart": dict(n_samples=600),
    "diffusion": dict(n_samples=600, steps=50),
    "eq1_check": dict(n_samples=6000, n_energy=3000),
    "algorithm1": dict(n_samples=1500, steps=20, step_counts=[1, 2, 50]),
    "train_your_own": dict(steps=150, n_samples=16, total_nfe=20),
    "algorithm2": dict(labels=list(range(10)) * 3, total_nfe=50, n_points=1000, outer_counts=[1, 5, 50]),
    "guided": dict(n_samples=20, seeds=[0, 1, 2]),
    "text_to_image": dict(prompts=["a handwritten seven", "the digit 3"], split_outers=[4, 25], n_eval=20),
    "inverse": dict(n_images=8, seeds=[0, 1, 2], tasks=["inpaint", "sr4_noisy"], total_nfe=50, n_reference=200),
    "table1": dict(n=TABLE1_N, seeds=[0, 1, 2], tradeoff_outer=[1, 5, 100], grid_digits=4),
    "anytime": dict(budget=50, n=20, seeds=[0, 1, 2], samplers=["vanilla", "nested 5x10", "back 5", "geometric 5"]),
    "previews": dict(n=20, seeds=[0, 1, 2], total_nfe=50, vanilla_every=10, timing_repeats=3),
    "flow": dict(n=20, seeds=[0, 1, 2], budgets=[50], n_toy=3000),
    "table1_emoji": dict(n=20, seeds=[0, 1, 2], budgets=[100], tradeoff_outer=[1, 5], grid_images=4),
}


def execute(name: str, tmp_path: Path, **overrides) -> dict:
    out_dir = tmp_path / name
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
        parameters={**SMALL.get(name, {}), **overrides, "out_dir": str(out_dir)}, cwd=str(ROOT), kernel_name="python3",
        progress_bar=False,
    )
    path = out_dir / "results.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_every_notebook_has_small_parameters():
    assert {p.stem for p in NOTEBOOKS} == set(SMALL)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_without_outputs_and_with_one_parameters_cell(nb):
    cells = nbformat.read(nb, as_version=4).cells
    code = [c for c in cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs before committing"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_chapter_sets_its_threads_before_computing(nb):
    """runtime.set_threads (one torch thread unless told) in the cell after the parameters, before any sampling:
    torch's default, one thread per core, collapses when another process is running (benchmarks/threads.py)."""
    code = [c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code"]
    params = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    setup = code[params + 1].source
    assert "set_threads(" in setup and "set_num_threads" not in "".join(c.source for c in code)
    assert setup.index("set_threads(") < min((setup.find(w) for w in ("prepare(", "run(", "load(") if w in setup),
                                              default=len(setup))


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_a_captioned_figure_cell_shows_only_its_figure(nb):
    """myst-nb captions every displayed output of a cell with figure metadata, under the same name (a duplicate
    target, so the build fails): a result table (show_table displays it in place) goes in a cell of its own."""
    for cell in nbformat.read(nb, as_version=4).cells:
        if cell.cell_type == "code" and "figure" in cell.metadata.get("mystnb", {}):
            assert "show_table(" not in cell.source, cell.metadata["mystnb"]["figure"].get("name")


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_code_cell_sets_the_chapter_up_on_colab(nb):
    """Installs the project from the book's repository when nestedlib is missing (Colab); hidden in the book."""
    import yaml

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    first = next(c for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "code")
    assert "remove-cell" in first.metadata.get("tags", [])
    assert 'find_spec("nestedlib") is None' in first.source and url in first.source


def test_quickstart_claims(tmp_path):
    r = execute("quickstart", tmp_path)
    ed = {row["nfe"]: row for row in r["results"]["energy_distance"]}
    first, last = min(ed), max(ed)
    # anytime: after 20 % of the NFEs the nested preview is already a sample, vanilla's is not
    assert ed[first]["nested"] < 0.05 < 0.5 < ed[first]["vanilla"]
    # and the final results are equally good
    assert ed[last]["nested"] < 0.05 and ed[last]["vanilla"] < 0.05


def test_algorithm1_claims(tmp_path):
    r = execute("algorithm1", tmp_path)["results"]
    assert r["max_abs_diff_nestedlib"] == 0.0  # the inline loop is nestedlib's, bit for bit
    assert r["max_abs_diff_diffusers_ddpm"] < 1e-3 and r["max_abs_diff_diffusers_ddim"] < 1e-3
    ed = {row["steps"]: row for row in r["energy_distance"]}
    assert all(row["exact_posterior"] < 0.01 for row in ed.values())  # exact p(x0|x_t): right in any number of steps
    assert ed[1]["dirac_mean"] > 1.0 and ed[2]["dirac_mean"] > 1.0  # a Dirac at the mean: averages, not samples
    assert ed[max(ed)]["dirac_mean"] < 0.01  # ... until the steps are many


def test_diffusion_claims(tmp_path):
    r = execute("diffusion", tmp_path)["results"]
    assert all(row["energy_distance"] < 0.02 for row in r["forward"])  # step-by-step chain == one closed-form jump
    assert r["ddpm"]["inline_vs_library"] < 1e-9  # the inline DDPM loop is nestedlib's vanilla DDPM
    assert r["ddpm"]["nfe"] == r["ddpm"]["steps"] and r["ddpm"]["energy_distance"] < 0.02  # and it samples the data
    est = sorted(r["estimates"], key=lambda row: -row["t"])
    # at t = 999 every estimate E[x0|x_t] sits at the data mean, off every cluster
    assert est[0]["t"] == 999 and est[0]["off_mode"] > 0.99 and est[0]["max_distance_to_mean"] < 0.2
    # in the middle of sampling most estimates lie between the clusters, where the data has almost no mass
    mid = min(est, key=lambda row: abs(row["t"] - 500))
    assert mid["off_mode"] > 0.5 > 10 * r["data_off_mode"] and mid["energy_distance"] > 0.3
    # at the end they are data points
    assert est[-1]["off_mode"] < 0.05 and est[-1]["energy_distance"] < 0.02
    # where two clusters are likely, the posterior mean lies far from every cluster centre
    assert max(p["nearest_centre_in_std"] for p in r["posterior_at_500"]) > 4
    # digits (the bundled digits8 model): mid-run estimates are blurry averages, the final samples are digits
    rows, ref = sorted(r["digits"]["rows"], key=lambda row: -row["t"]), r["digits"]["reference"]
    blur = min(rows, key=lambda row: row["rms_to_mean_digit"])
    assert blur["rms_to_mean_digit"] < 0.5 * ref["rms_to_mean_digit"] and blur["sharpness"] < 0.75 * ref["sharpness"]
    assert rows[-1]["sharpness"] > 0.8 * ref["sharpness"] and rows[-1]["rms_to_mean_digit"] > 0.8 * ref["rms_to_mean_digit"]
    assert r["digits"]["first_step_amplification"] > 100  # why the first estimate is left out of the figure


def test_eq1_check_claims(tmp_path):
    r = execute("eq1_check", tmp_path)["results"]
    fixed = r["fixed_x_t"]
    floor, eq1, dirac = fixed["left side, second draw"], fixed["Eq. 1, exact posterior"], fixed["Dirac at the mean"]
    assert r["inline_vs_library"] < 1e-12
    # Eq. 1 with exact posterior draws is the exact reverse step: as close as a second draw of the left side
    assert floor["energy_distance"] < 0.005 and eq1["energy_distance"] < 0.005 and eq1["cov_error"] < 0.1
    # a Dirac at the mean has the right mean but misses covariance, and is far from the exact law
    assert dirac["mean_error"] < 0.05 and dirac["cov_error"] > 0.5 and dirac["energy_distance"] > 0.05
    assert r["closed_form"]["mean_identity"] < 1e-10 and r["closed_form"]["cov_identity"] < 1e-10
    ratios = [row["ratio"] for row in r["step_length"]]
    assert ratios == sorted(ratios) and ratios[0] < 0.01 < 1 < ratios[-1]  # missing part grows with the step
    ddim = r["ddim"]
    fixed_eta = dict(zip(ddim["etas"], ddim["fixed_x_t"]))
    assert fixed_eta[1.0] < 0.005 and fixed_eta[0.0] > 0.05  # for a fixed x_t only eta = 1 is the DDPM step
    assert all(v < 0.005 for v in ddim["marginal"]) and ddim["marginal_floor"] < 0.005  # every eta keeps p(x_t')
    assert ddim["dirac_marginal"] > 0.03
    # Nested Diffusion with an exact inner sampler: energy distances of n_energy points, whose data-vs-data spread
    # (standard deviation over 8 draws, about 0.0015 at 3000 points) is the error model
    nest = r["nested_exact_inner"]
    sd, eds = nest["floor_std"], nest["energy_distance"]
    assert sd < 0.004 and nest["preview_nfe"] == [20, 40, 60, 80, 100]
    # DDIM at eta = 1 is the DDPM step: the same draws give the same clouds, up to float rounding of the formulas
    assert max(abs(a - b) for a, b in zip(eds["DDIM eta=1"], eds["DDPM"])) < 1e-9
    for name in ("DDPM", "DDIM eta=0.85"):  # inner steps that keep p(x_0 | x_t): every preview is data
        assert all(e < 0.01 for e in eds[name]), name
    for name in ("DDIM eta=0", "DDIM eta=0.3"):  # marginals only: the first preview is right, the last is not
        assert eds[name][0] < 0.01 and eds[name][-1] > max(0.012, 5 * sd), name


def test_train_your_own_runs(tmp_path):
    r = execute("train_your_own", tmp_path)["results"]
    assert r["final_loss"] < r["first_loss"] / 3  # the loop learns
    leg = r["legibility"]
    # the legibility score reads real held-out digits and fails on noise (500 fresh images of each kind)
    assert leg["held_out_real"] > 0.6 and leg["gaussian_noise"] < 0.02 and leg["saturated_noise"] < 0.02
    # without the "not a digit" class, a classifier reads noise as digits: why the class is there
    assert leg["without_noise_class"]["saturated_noise"] > 0.1
    assert set(leg["nested"]) == set(leg["vanilla"]) == {"4", "8", "12", "16", "20"}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_algorithm2_claims(tmp_path, seed):
    """30 images (3 per class) per seed: a binomial accuracy near 0.7 then has sd 0.08, so the 0.15 gap asserted
    below is about two of them; measured over seeds 0-2 at 50 NFEs: vanilla 0.57-0.73 at 20 %, nested 1.0."""
    r = execute("algorithm2", tmp_path, seed=seed)["results"]
    assert r["inline_equals_nestedlib"]  # Algorithm 2 written inline is nestedlib.nested, every preview bit for bit
    assert r["preview_nfes"]["nested"] == [10, 20, 30, 40, 50]  # a finished image every 50 / 5 NFEs
    assert r["preview_nfes"]["vanilla"] == list(range(1, 51)) and r["nfe"] == {"vanilla": 50, "nested": 50}
    acc = r["class_accuracy"]  # the bundled classifier, at every tenth of the budget (None: no preview yet)
    assert acc["nested"]["5"] is None and acc["vanilla"]["5"] < 0.8  # vanilla's first previews: decoded fragments
    assert acc["nested"]["10"] >= 0.9 and acc["nested"]["50"] >= 0.9  # anytime: the first preview is a real digit
    assert acc["vanilla"]["10"] <= acc["nested"]["10"] - 0.15  # ... while vanilla's is still often broken there
    assert acc["vanilla"]["50"] >= 0.9  # the final samples of both are digits
    trade = {row["outer"]: row for row in r["toy_tradeoff"]}
    assert all(row["r_nd"] == row["outer"] / row["inner"] for row in trade.values())  # R_ND = |outer| / |inner|
    assert trade[1]["at_20_percent"] is None  # one outer step: nothing to show before the end
    assert trade[5]["at_20_percent"] < 0.05 < 0.5 < trade[50]["at_20_percent"]  # 1-step inner runs: averages
    assert all(row["final"] < 0.05 for row in trade.values())  # the final quality holds at every split


# --- table1: Table 1 on the bundled DiT -----------------------------------------------------------------------------


def table1_claims(rows, seeds, budgets=(100, 150, 250), early=(20, 40), final_factor=1.3):
    """Issue 8's claims on Table-1 rows, for every budget and seed: nested FID < vanilla FID at each early percent
    of the budget (20 % and 40 %), and nested's final FID <= final_factor x vanilla's final FID. Returns the
    failures."""
    fid = {(r["budget"], r["percent"], r["sampler"], r["seed"]): r["fid"] for r in rows}
    failed = []
    for b in budgets:
        for s in seeds:
            for q in early:
                if not fid[b, q, "nested", s] < fid[b, q, "vanilla", s]:
                    failed.append(f"budget {b}, seed {s}, {q} %: nested {fid[b, q, 'nested', s]:.1f} >= vanilla "
                                  f"{fid[b, q, 'vanilla', s]:.1f}")
            if not fid[b, 100, "nested", s] <= final_factor * fid[b, 100, "vanilla", s]:
                failed.append(f"budget {b}, seed {s}: final nested {fid[b, 100, 'nested', s]:.1f} > {final_factor} x "
                              f"vanilla {fid[b, 100, 'vanilla', s]:.1f}")
    return failed


def test_table1_claims_on_the_committed_gpu_sweep():
    """The committed 10,000-sample sweep (results/table1-h100) holds issue 8's claims for every budget and seed."""
    rows = [row for f in sorted((ROOT / "results" / "table1-h100").glob("seed*.json"))
            for row in json.loads(f.read_text())["results"]["rows"]]
    seeds = sorted({r["seed"] for r in rows})
    assert seeds == [0, 1, 2] and {r["n"] for r in rows} == {10000}
    assert not table1_claims(rows, seeds)


def test_table1_claims(tmp_path):
    """One papermill run of the chapter: 3 budgets x 3 seeds at TABLE1_N samples per cell, and the claims its text
    makes. Sampling noise at n = 20, measured on scripts/sweep.py rows (the same code) for seeds 0-5 and on this run's
    seeds 0-2 (classifier FID, 27 (budget, seed) pairs): log(vanilla / nested) at 20 % is 0.51 to 1.04 (mean about
    0.8, sd about 0.15 per budget), more than 3 sd from 0; at 40 % it is 0.04 +- 0.19 at best, within the noise, so
    the 40 % claim is asserted on the committed 10,000-sample sweep only (its ratio is about 0.27 there, with
    seed-to-seed sd under 2 % of the FIDs); nested / vanilla at the end is at most 1.16 (small-n bias pulls every
    ratio towards 1), under the 1.3 of the claim. CPU runs are deterministic, so these seeds pass or fail the same
    way every time."""
    r = execute("table1", tmp_path)["results"]
    rows, seeds = r["rows"], [0, 1, 2]
    assert {x["n"] for x in rows} == {TABLE1_N} and sorted({x["seed"] for x in rows}) == seeds
    assert not table1_claims(rows, seeds, early=(20,))  # the small in-book run: every budget and seed
    assert not table1_claims(r["gpu_sweep"]["rows"], r["gpu_sweep"]["seeds"])  # and the sweep the chapter shows
    assert r["gpu_sweep"]["n"] == 10000 and r["gpu_sweep"]["folder"] == "table1-h100"
    assert len(r["floor"]) == 3 and all(f["n"] == TABLE1_N and f["n_real"] == 1000 for f in r["floor"])
    # the previews: nested at each outer step, vanilla every 10 NFEs, inner previews every 10 NFEs of one budget
    dense = r["dense"]
    for b in (100, 150, 250):
        kinds = {k: sorted({d["nfe"] for d in dense if d["budget"] == b and d["kind"] == k and d["seed"] == 0})
                 for k in ("vanilla", "nested", "inner")}
        assert kinds["nested"] == list(range(b // 5, b + 1, b // 5))
        assert set(range(10, b + 1, 10)) <= set(kinds["vanilla"])
        assert kinds["inner"] == (list(range(10, b + 1, 10)) if b == 250 else [])
    # Figure 4: an inner run ends at its outer preview (the same images, the same FID)
    for d in r["inner_drops"]:
        outer_fid = [x["fid"] for x in dense if x["budget"] == 250 and x["kind"] == "nested" and x["nfe"] == d["last_nfe"]]
        assert d["last"] == pytest.approx(sum(outer_fid) / len(outer_fid), rel=1e-6)
    # R_ND: one outer step shows nothing at 20 %; the others do, and every split spends the budget
    trade = {t["outer"]: t for t in r["tradeoff"]}
    assert trade[1]["at_20_percent"] is None and trade[1]["first_preview_nfe"] == 100
    assert trade[5]["first_preview_nfe"] == 20 and trade[100]["first_preview_nfe"] == 1
    assert all(t["r_nd"] == t["outer"] / t["inner"] for t in trade.values())
    # nested's first preview is as good as its outer preview in the main run (the same 5 x 20 samples)
    assert trade[5]["at_20_percent"] == pytest.approx(
        [x["fid"] for x in r["rows"] if (x["budget"], x["percent"], x["sampler"], x["seed"]) == (100, 20, "nested", 0)][0],
        rel=1e-6)
    assert r["dit_xl2"]["flops_per_image_nfe"] > 1e11  # DiT-XL/2 is counted, not assumed
    # the floor is drawn class-balanced, as the samples ask for their digits
    assert all(f.get("balanced") for f in r["floor"])
    # Figure 4: the first inner run's previews fall, from a noisy one-step mean to a finished sample
    first_run = r["inner_drops"][0]
    assert first_run["first"] > 2 * first_run["last"]
    # KID at small n: class-balanced sets of real digits score clearly negative, random ones zero within their error,
    # and the offset shrinks with n (100 sets at n = 30 and 100, 20 at n = 1,000; deterministic draws)
    kb = {(k["n"], k["draw"]): k for k in r["kid_bias"]}
    for m in (30, 100):
        assert kb[m, "class-balanced"]["mean"] + 4 * kb[m, "class-balanced"]["se"] < 0
        assert abs(kb[m, "random"]["mean"]) < 4 * kb[m, "random"]["se"]
    assert kb[30, "class-balanced"]["mean"] < kb[100, "class-balanced"]["mean"] < kb[1000, "class-balanced"]["mean"]


def test_intro_final_fid_claim():
    """book/intro.md: nested's final FID is 6 to 30 % above vanilla's in the paper's Table 1, and 14 to 19 % above on
    the bundled DiT (the committed 10,000-sample sweep, seed means)."""
    lines = [l for l in (ROOT / "data" / "paper" / "table1.csv").read_text().splitlines() if l and l[0] != "#"]
    paper = [dict(zip(lines[0].split(","), l.split(","))) for l in lines[1:]]
    paper = [float(r["fid_nd"]) / float(r["fid_van"]) for r in paper if r["percent"] == "100"]
    rows = [row for f in sorted((ROOT / "results" / "table1-h100").glob("seed*.json"))
            for row in json.loads(f.read_text())["results"]["rows"] if row["percent"] == 100]
    mean = lambda b, s: sum(r["fid"] for r in rows if (r["budget"], r["sampler"]) == (b, s)) / 3
    ours = [mean(b, "nested") / mean(b, "vanilla") for b in (100, 150, 250)]
    text = (ROOT / "book" / "intro.md").read_text()
    assert "6 to 30 % above" in text and "14 to 19 %" in text
    assert round(100 * (min(paper) - 1)) == 6 and round(100 * (max(paper) - 1)) == 30
    assert round(100 * (min(ours) - 1)) == 14 and round(100 * (max(ours) - 1)) == 19


def test_anytime_end_law_depends_on_the_sample_count():
    """The anytime chapter: under the end law (the final FID) nested 5 x 20 is ahead of vanilla at 100 samples per
    seed (report seeds) and behind at 3,000 (the dense sweep); the page says the two sample counts disagree there."""
    import math

    report = json.loads((ROOT / "results" / "anytime-cpu" / "report.json").read_text())
    final = {}
    for c in report["curves"].values():
        if c["budget"] == 100 and c["spec"] in ("vanilla", "nested 5x20"):
            final.setdefault(c["spec"], []).append(c["log_fid"][-1])
    at_100 = math.exp(sum(final["nested 5x20"]) / len(final["nested 5x20"]) - sum(final["vanilla"]) / len(final["vanilla"]))
    dense = json.loads((ROOT / "results" / "table1-variants-h100" / "dense.json").read_text())["results"]["rows"]
    logs = {s: [math.log(r["fid"]) for r in dense if (r["budget"], r["sampler"], r["preview_nfe"]) == (100, s, 100)]
            for s in ("vanilla", "nested")}
    at_3000 = math.exp(sum(logs["nested"]) / len(logs["nested"]) - sum(logs["vanilla"]) / len(logs["vanilla"]))
    assert at_100 < 1 < at_3000


def test_table1_runs_a_saved_dit_pipeline(tmp_path):
    """The DiT-XL/2 path offline: a tiny random DiTPipeline saved to a folder stands in for the hub model, judged by
    pooled pixels against a tensor of reference images (Inception needs the internet)."""
    import torch
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    from test_pipelines import tiny_vae

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_num_groups=4)
    DiTPipeline(transformer=transformer.eval(), vae=tiny_vae().eval(), scheduler=DDIMScheduler()).save_pretrained(
        tmp_path / "tiny-dit")
    torch.save(torch.rand(16, 3, 16, 16) * 2 - 1, tmp_path / "reference.pt")
    record = execute("table1", tmp_path, model=str(tmp_path / "tiny-dit"), judge="pixels",
                     reference=str(tmp_path / "reference.pt"), n=4, seeds=[0], budgets=[10], inner_budget=10,
                     tradeoff_nfe=10, tradeoff_outer=[5], batch=4, grid_digits=4)
    r = record["results"]
    assert record["parameters"]["judge"] == "pixels" and r["floor"] == []
    assert {(x["budget"], x["percent"], x["sampler"]) for x in r["rows"]} == {
        (10, q, s) for q in (20, 40, 60, 80, 100) for s in ("vanilla", "nested")}
    assert all(x["class_accuracy"] is None for x in r["rows"])
    # pooled-pixel FID of random-weight samples against uniform noise: finite, far from the zero of a set judged
    # against itself, and different at each stop (the judge saw each stop's own images)
    fids = [x["fid"] for x in r["rows"]]
    assert all(math.isfinite(f) and f > 1e-3 for f in fids) and len(set(fids)) > len(fids) // 2


def test_flow_claims(tmp_path):
    r = execute("flow", tmp_path)["results"]
    assert r["inline_vs_nestedlib"] == 0.0 and r["ddim_step_vs_euler"] < 1e-12  # the written-out step; it is Euler's
    assert r["one_outer_step_is_vanilla"]
    for seed in (0, 1, 2):
        rows = [row for row in r["toy"] if row["seed"] == seed]
        exact = [row["energy_distance"] for row in rows if row["x0_sampler"] != "network mean (exact velocity)"]
        mean = [row["energy_distance"] for row in rows if row["x0_sampler"] == "network mean (exact velocity)"]
        assert max(exact) < 0.01 < 0.5 < min(mean)  # exact draws: exact in 1, 2, 10 steps and nested; the mean: not
        table = [row for row in r["table1"] if row["seed"] == seed]
        # the reader's question: the flow's one-step x̂0 is already a legible digit after 20 % of the budget, and
        # so is every nested preview; on this model nesting adds no accuracy (the chapter says so)
        assert all(row["accuracy"] >= 0.9 for row in table if row["sampler"] == "vanilla" and row["percent"] == 20)
        assert all(row["accuracy"] >= 0.85 for row in table if row["sampler"] == "nested")
    assert r["nested_pipeline_nfes"] == [4, 8, 12, 16, 20]  # the README's lines on the bundled flow model


# --- table1_emoji: Table 1 on the colour stand-in -------------------------------------------------------------------


def test_table1_claims_on_the_committed_emoji_sweep():
    """The committed CPU sweep of emoji-dit (results/table1-emoji-cpu, 100 samples per cell, seeds 0-2): nested better
    than vanilla at 20 % for every budget and seed (vanilla's FID there is 4,390-4,870, nested's 840-1,150: over 3.8
    times, far beyond the spread between seeds), and nested's final FID at most 1.3 x vanilla's in the seed means
    (1.03, 1.15 and 0.87 for 100, 150 and 250 NFEs). Single cells are not asserted at the end: at n = 100 one
    seed's final FID moves by up to a third (vanilla at 150 NFEs: 670 to 992), so one cell (seed 1, 150 NFEs) reads 1.5."""
    rows = [row for f in sorted((ROOT / "results" / "table1-emoji-cpu").glob("seed*.json"))
            for row in json.loads(f.read_text())["results"]["rows"]]
    seeds = sorted({r["seed"] for r in rows})
    assert seeds == [0, 1, 2] and {r["n"] for r in rows} == {100}
    assert not table1_claims(rows, seeds, early=(20,), final_factor=math.inf)
    for b in (100, 150, 250):
        final = {s: sum(r["fid"] for r in rows if (r["budget"], r["percent"], r["sampler"]) == (b, 100, s)) / 3
                 for s in ("vanilla", "nested")}
        assert final["nested"] <= 1.3 * final["vanilla"], (b, final)


def test_table1_emoji_claims(tmp_path):
    """The chapter at CI size (budget 100, n = 20, seeds 0-2): nested beats vanilla at 20 % for every seed (on the
    committed sweep vanilla's FID there is 4 to 5 times nested's, so n = 20 keeps a wide margin), and the comparison
    holds the three sources, raw and floor-subtracted, from the committed sweeps."""
    r = execute("table1_emoji", tmp_path)["results"]
    rows, seeds = r["rows"], [0, 1, 2]
    assert {x["n"] for x in rows} == {20} and sorted({x["seed"] for x in rows}) == seeds
    # the early claim only: at n = 20 the final FIDs of the two samplers are within the noise of each other; the final
    # claim is asserted on the committed sweep above
    assert not table1_claims(rows, seeds, budgets=(100,), early=(20,), final_factor=math.inf)
    assert all(f["n"] == 20 and f["n_real"] == 946 for f in r["floor"])  # unbalanced floors against every held-out emoji
    kinds = {(s["source"].split(" ")[0], s["FID"]) for s in r["shapes"]}
    assert kinds == {("paper", "raw"), ("digits", "raw"), ("digits", "minus floor"), ("emoji", "raw"),
                     ("emoji", "minus floor")}
    assert r["sweep"]["folder"] == "table1-emoji-cpu" and r["sweep"]["n"] == 100 and r["sweep"]["seeds"] == seeds
