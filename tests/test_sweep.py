"""scripts/sweep.py: one process and two torchrun (gloo) processes write the same results.json numbers; its rows
cover the grid; bad command lines fail with a message that says what to pass.

The two runs go side by side (about 25 s together on an idle 2-core machine, most of it importing diffusers).
Each process runs one thread: the samples are cut into the same fixed micro-batches in both runs, so every network
and decoder call sees the same batch and the numbers agree bit for bit. (With another thread count the VAE's
convolutions round differently at small batches: FID then moves by about 1e-7 relative, which is not tested here.)
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "sweep.py"
SMALL = ["--budgets", "10", "--percents", "50", "100", "--n", "8", "--batch", "4", "--seeds", "0", "1",
         "--judges", "classifier", "pixels", "logits"]
METRICS = ("budget", "percent", "nfe", "preview_nfe", "sampler", "seed", "n", "fid", "kid", "kid_std",
           "class_accuracy")


def load_script():
    spec = importlib.util.spec_from_file_location("sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """results.json of the small grid from one process and from `torchrun --nproc_per_node 2` (gloo)."""
    out = tmp_path_factory.mktemp("sweep")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    commands = {
        1: [sys.executable, str(SCRIPT), *SMALL, "--out", str(out / "one")],
        2: [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
            str(SCRIPT), *SMALL, "--out", str(out / "two")],
    }
    procs = {k: subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, c in commands.items()}
    results = {}
    for k, proc in procs.items():
        log, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{k} process(es) failed:\n{log[-4000:]}"
        results[k] = json.loads((out / ("one" if k == 1 else "two") / "results.json").read_text())
    return results


def test_one_and_two_processes_give_identical_numbers(runs):
    one, two = runs[1]["results"], runs[2]["results"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["rows"] == two["rows"]  # every metric, bit for bit
    assert one["floor"] == two["floor"]
    assert one["image_nfe"] == two["image_nfe"] == 2 * 10 * 8 * 2  # samplers x budget x n x seeds


def test_results_schema(runs):
    record = runs[1]
    res, params = record["results"], record["parameters"]
    rows = res["rows"]
    grid = {(b, p, s, seed) for b in (10,) for p in (50, 100) for s in ("vanilla", "nested") for seed in (0, 1)}
    assert {(r["budget"], r["percent"], r["sampler"], r["seed"]) for r in rows} == grid and len(rows) == len(grid)
    for r in rows:
        assert set(METRICS) <= set(r)
        assert r["nfe"] == r["budget"] * r["percent"] // 100 and r["n"] == 8
        assert r["preview_nfe"] <= r["nfe"]  # the preview held at the stop
        assert r["fid"] > 0 and r["kid_std"] >= 0 and 0 <= r["class_accuracy"] <= 1
        assert r["fid_pixels"] > 0 and r["fid_logits"] > 0 and r["fid_pixels"] != r["fid"] != r["fid_logits"]
        assert {"kid_pixels", "kid_logits"} <= set(r) and "fid_classifier" not in r
        if r["sampler"] == "vanilla" or r["percent"] == 100:
            assert r["preview_nfe"] == r["nfe"]
    nested50 = [r for r in rows if (r["sampler"], r["percent"]) == ("nested", 50)]
    assert {r["preview_nfe"] for r in nested50} == {4}  # 2 of 5 outer steps (2 NFEs each) fit in 5 NFEs
    assert [f["seed"] for f in res["floor"]] == [0, 1]
    assert all(f["n"] == 8 and f["n_real"] == 1000 and f["fid"] > 0 for f in res["floor"])  # as the cells compare
    assert params["budgets"] == [10] and params["n"] == 8 and params["guidance"] == 1.5
    assert res["model"] == "mnist-dit" and res["commit"] and res["machine"]["cpu_count"]
    assert res["time"]["wall_s"] > 0 and len(res["time"]["sampling_s"]) == 1 and res["image_nfe_per_s"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "12"], "does not divide into 5 outer steps"),
    (["--budgets", "0"], "does not divide into 5 outer steps"),
    (["--percents", "0"], "outside (0, 100]"),
    (["--percents", "120"], "outside (0, 100]"),
    (["--percents", "10"], "before Nested Diffusion's first preview"),
    (["--n", "1"], "at least 2 samples"),
    (["--batch", "0"], "--batch must be a positive"),
    (["--seeds", "0", "0"], "lists a value twice"),
    (["--unconditional", "--guidance", "1.5"], "no guidance"),
    (["--model", "mnist-sd"], "supports mnist-dit"),
    (["--judges", "inception"], "invalid choice"),
    (["--judges", "pixels", "pixels"], "lists a value twice"),
])
def test_bad_inputs_say_what_to_do(argv, message, capsys):
    sweep = load_script()
    with pytest.raises(SystemExit) as err:
        sweep.parse_args(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_good_inputs_and_chunks():
    sweep = load_script()
    args = sweep.parse_args(["--unconditional", "--budgets", "100", "150", "--samples", "10"])
    assert args.guidance == 1.0 and args.n == 10 and args.percents == [20, 40, 60, 80, 100]
    chunks = sweep.chunks(10, 4)
    assert [list(c) for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [list(c) for c in chunks[1::2]] == [[4, 5, 6, 7]]  # rank 1 of 2
    assert sweep.labels_of(range(8, 12)) == [8, 9, 0, 1]
