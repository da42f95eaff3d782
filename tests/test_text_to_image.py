"""The text-to-image chapter (Figures 1, 5 and 7 on mnist-sd): its claims, asserted from its results.json for 3
seeds, and its Stable Diffusion 1.5 path, run offline on tiny random components."""
import json

import nbformat

from test_notebooks import ROOT, execute
from test_pipelines import tiny_sd_pipe

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def test_the_stable_diffusion_path_runs_offline_on_tiny_components(tmp_path, monkeypatch):
    """model = the Stable Diffusion 1.5 id: the chapter's own cells, run in this process with the hub download
    replaced by a tiny random StableDiffusionPipeline (RGB 16 x 16 images; the digit measures are skipped)."""
    import matplotlib

    import nestedlib.models

    matplotlib.use("Agg")
    pipe, real_load = tiny_sd_pipe(set_alpha_to_one=False), nestedlib.models.load
    monkeypatch.setattr(nestedlib.models, "load",
                        lambda name, *a, **k: pipe if name == SD15 else real_load(name, *a, **k))
    cells = [c for c in nbformat.read(ROOT / "notebooks" / "text_to_image.ipynb", as_version=4).cells
             if c.cell_type == "code"]
    overrides = dict(model=SD15, prompts=["a seven", "a digit"], total_nfe=20, outer=4, second_nfe=10,
                     second_outer=2, split_outers=[2, 4], out_dir=str(tmp_path / "out"))
    from IPython.display import display

    ns = {"display": display}
    for cell in cells:
        exec(compile(cell.source, "text_to_image", "exec"), ns)
        if "parameters" in cell.metadata.get("tags", []):
            ns.update(overrides)
    r = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert r["same_as_paper_samplers"]  # the chapter's nested sampler is the library's paper preset
    assert r["preview_nfes"]["20/nested: last inner run"] == [5, 10, 15, 20]
    assert r["preview_nfes"]["20/vanilla: decoded one-step x̂0"] == list(range(1, 21))
    assert r["preview_nfes"]["10/nested: last inner run"] == [5, 10]
    assert r["figure_5_first_preview"] == {"2": 10, "4": 5} and r["measures"] == {}
    assert ns["sd"].shape == (2, 4, 8, 8) and ns["sd"].network.guidance_scale == 7.5  # the paper's w for SD 1.5


def test_text_to_image_claims(tmp_path):
    """One run of the chapter at n = 20 prompts per seed, seeds 0-2 (SMALL in test_notebooks.py). Each claim of the
    chapter's verdict is asserted as a paired difference (nested - vanilla, same prompts and noise) with the same
    sign in every seed. Measured at this n: the final FIDs differ by 89-124 with a seed-to-seed spread of 7-12; the
    change-to-end differences are 0.04-0.06 against a spread of 0.001-0.004; the decoded z_t's FID at 20 % is about
    four times vanilla's preview's (2,400 against 350 at n = 50)."""
    r = execute("text_to_image", tmp_path)["results"]
    assert r["same_as_paper_samplers"]  # the chapter's nested sampler is nestedlib's paper preset, bit for bit
    assert r["preview_nfes"]["100/nested: last inner run"] == list(range(4, 101, 4))  # 25 x 4
    assert r["preview_nfes"]["80/nested: last inner run"] == list(range(4, 81, 4))  # 20 x 4
    assert r["preview_nfes"]["100/vanilla: decoded one-step x̂0"] == list(range(1, 101))
    assert r["figure_5_first_preview"] == {"4": 25, "25": 4}
    m, d = r["measures"], r["paired_differences"]
    van, zt, ddim, dpm = ("vanilla DDIM", "vanilla DDIM, decoded z_t", "nested, ddim inner",
                          "nested, dpm-solver++ inner")
    stops = ["10", "20", "40", "60", "80", "100"]

    def mean(name, k, key):
        return sum(row[key] for row in m[name][k]) / len(m[name][k])

    # every preview of both samplers is legible from 10 % of the budget on, nested's at least as often ...
    assert all(mean(van, k, "accuracy") >= 0.9 and mean(ddim, k, "accuracy") >= 0.9 for k in stops)
    assert all(mean(ddim, k, "accuracy") >= mean(van, k, "accuracy") for k in stops)
    # ... but vanilla's decoded latent z_t is not: the fracture patterns
    assert mean(zt, "20", "accuracy") < 0.5
    assert all(row["fid"] > 2 * v["fid"] for row, v in zip(m[zt]["20"], m[van]["20"]))
    # the final samples (and already those at 60 and 80 %): nested ahead in FID in every seed
    assert all(all(x < 0 for x in d[ddim][k]["fid"]) for k in ("60", "80", "100"))
    # at 20 %: no consistent early advantage in FID; the sign changes between seeds
    assert min(d[ddim]["20"]["fid"]) < 0 < max(d[ddim]["20"]["fid"])
    # nested's previews (inner eta 0.85) are farther from its end result than vanilla's from 40 % on
    assert all(all(x > 0.02 for x in d[ddim][k]["change_to_end"]) for k in ("40", "60", "80"))
    # DPM-Solver++ inside: previews closest to the end; final samples less often the prompted digit; FID growing
    # over the second half of the run
    assert all(all(x < 0 for x in d[dpm][k]["change_to_end"]) for k in stops[:-1])
    assert all(x < 0 for x in d[dpm]["100"]["accuracy"])
    assert mean(dpm, "100", "fid") > mean(dpm, "80", "fid") > mean(dpm, "60", "fid")
    # its early FID lead (asserted from the sweep) does not show at n = 20: the sign changes between seeds
    # (measured: -27, +41, +69, against float32 noise of about 1e-3 in these FIDs)
    assert min(d[dpm]["20"]["fid"]) < 0 < max(d[dpm]["20"]["fid"])
    # small n: two real sets of these sizes are farther apart than nested's final samples and the held-out digits
    floor = sum(f["fid"] for f in r["real_floor"]) / len(r["real_floor"])
    assert floor > mean(ddim, "100", "fid")


def test_settings_sweep_claims():
    """The chapter's statements about the settings sweep (results/text-to-image-settings, 100 prompts per seed,
    seeds 0-2), read from the committed rows: each is a paired comparison with vanilla in every seed."""
    rows = json.loads((ROOT / "results" / "text-to-image-settings" / "settings.json").read_text())
    fid = {(r["name"], r["guidance"], r["seed"]): {int(k): v and v["fid"] for k, v in r["metrics"].items()}
           for r in rows}
    seeds = (0, 1, 2)

    def ahead(name, w, p):  # seeds in which the setting's FID is below vanilla's at the same guidance
        return sum(fid[name, w, s][p] < fid["vanilla", w, s][p] for s in seeds)

    assert all(("vanilla", w, s) in fid for w in (2.0, 4.0, 7.5) for s in seeds)
    nd = "nested25x4_eta0.85"
    assert ahead(nd, 4.0, 20) == 0 and ahead(nd, 4.0, 100) == 3  # the defaults: behind at 20 %, ahead at the end
    settings = {(r["name"], r["guidance"]) for r in rows}
    nested = sorted(k for k in settings if k[0] != "vanilla")
    # at 10 %: nested ahead in every seed for every setting except the 50 x 2 split
    assert all(ahead(n, w, 10) == 3 for n, w in nested if n != "nested50x2") and ahead("nested50x2", 4.0, 10) == 0
    # at 20 %: only DPM-Solver++ inside ahead in every seed; the authors' settings behind in every seed at w = 4
    assert [k for k in nested if ahead(*k, 20) == 3] == [("nested25x4_dpm", 4.0)]
    assert ahead(nd, 4.0, 20) == 0 and max(ahead(*k, 20) for k in nested if k[0] != "nested25x4_dpm") <= 2
    # DPM-Solver++ inside: final samples less often the prompted digit (every seed), final FID higher in 2 of 3
    acc = {(r["name"], r["guidance"], r["seed"]): r["metrics"]["100"]["acc"] for r in rows}
    assert all(acc["nested25x4_dpm", 4.0, s] < acc["vanilla", 4.0, s] for s in seeds)
    assert ahead("nested25x4_dpm", 4.0, 100) == 1
    # at the end: every inner-DDIM setting ahead in every seed at w = 4 and 7.5; level on average at w = 2
    assert all(ahead(n, w, 100) == 3 for n, w in nested if w in (4.0, 7.5) and n != "nested25x4_dpm")
    mean = lambda n, w, p: sum(fid[n, w, s][p] for s in seeds) / 3  # noqa: E731
    assert abs(mean(nd, 2.0, 100) - mean("vanilla", 2.0, 100)) < 2
    # inner eta 0 ahead of eta 0.85 at 10 %, 20 % and the end, in every seed
    assert all(fid["nested25x4_eta0", 4.0, s][p] < fid[nd, 4.0, s][p] for s in seeds for p in (10, 20, 100))
    # guidance raises every FID; nested's final lead grows with it
    lead = {w: mean("vanilla", w, 100) - mean(nd, w, 100) for w in (2.0, 4.0, 7.5)}
    assert lead[2.0] < lead[4.0] < lead[7.5]
    assert all(mean(n, 2.0, p) < mean(n, 4.0, p) < mean(n, 7.5, p) for n in ("vanilla", nd) for p in (10, 20, 100))
