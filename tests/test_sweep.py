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
SMALL = ["--budgets", "10", "--percents", "50", "100", "--samples", "8", "--batch", "4", "--seeds", "0", "1",
         "--judges", "classifier", "pixels", "logits", "--allow-dirty"]  # also from a checkout with local changes
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


@pytest.mark.slow  # its fixture runs the sweep under torchrun, on 1 and on 2 processes
def test_one_and_two_processes_give_identical_numbers(runs):
    one, two = runs[1]["results"], runs[2]["results"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["rows"] == two["rows"]  # every metric, bit for bit
    assert one["floor"] == two["floor"]
    assert one["image_nfe"] == two["image_nfe"] == 2 * 10 * 8 * 2  # samplers x budget x n x seeds


@pytest.mark.slow  # the torchrun runs
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
        assert {"fid_pixels", "kid_pixels", "fid_logits", "kid_logits"} <= set(r) and "fid_classifier" not in r
        if r["sampler"] == "vanilla" or r["percent"] == 100:
            assert r["preview_nfe"] == r["nfe"]
    nested50 = [r for r in rows if (r["sampler"], r["percent"]) == ("nested", 50)]
    assert {r["preview_nfe"] for r in nested50} == {4}  # 2 of 5 outer steps (2 NFEs each) fit in 5 NFEs
    assert [f["seed"] for f in res["floor"]] == [0, 1]
    assert all(f["n"] == 8 and f["n_real"] == 1000 for f in res["floor"])  # as the cells compare
    assert params["budgets"] == [10] and params["n"] == 8 and params["guidance"] == 1.5
    assert res["model"] == "mnist-dit" and res["commit"] and res["machine"]["cpu_count"]
    t = res["time"]
    assert len(t["sampling_s"]) == len(t["decode_s"]) == 1
    # the phases of one process add up to less than its wall time (which also holds loading), and the rate is the
    # image-NFEs over the sampling phase
    assert t["sampling_s"][0] + t["decode_s"][0] + t["gather_s"][0] + t["metrics_s"] < t["wall_s"]
    assert res["image_nfe_per_s"] == pytest.approx(res["image_nfe"] / (t["sampling_s"][0] + t["decode_s"][0]), rel=1e-12)
    two = runs[2]["results"]["time"]
    assert len(two["sampling_s"]) == 2 and max(two["sampling_s"]) < two["wall_s"]


@pytest.mark.slow  # the torchrun runs
def test_rows_are_the_judges_scores_of_the_samples(runs):
    """Seed 1's four rows, recomputed in this process: the samples of nestedlib.sweep (the same micro-batches and
    streams), their previews at each stop, and one metrics.Judge per feature space. One thread, as in the runs: the
    same float operations in the same batches, so the numbers agree bit for bit (another thread count would move
    FID by about 1e-7 relative, see the module docstring). The floors are metrics.real_floor's."""
    import torch

    from nestedlib import data, metrics, models, sweep as shared

    sweep = load_script()
    args = sweep.parse_args(SMALL)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sampler = sweep.Sampler(args, torch.device("cpu"))
        images = {}
        with torch.inference_mode():
            for idx in shared.chunks(args.n, args.batch):
                model = sampler.model(idx)
                for name, result in shared.sample_batch(model, 10, 1, idx, outer=args.outer).items():
                    for p in args.percents:
                        images.setdefault((name, p), []).append(model.decode(result.at(10 * p // 100).x0).float())
            clf = models.load("mnist-classifier")
            real = data.mnist("heldout")[0]
            judges = {name: metrics.Judge(clf, real, name) for name in ("classifier", "logits", "pixels")}
            rows = {(r["sampler"], r["percent"]): r for r in runs[1]["results"]["rows"] if r["seed"] == 1}
            labels = [i % 10 for i in range(args.n)]
            for key, parts in images.items():
                x = torch.cat(parts)
                want = judges["classifier"].scores(x, labels, seed=1)
                got = rows[key]
                assert (got["fid"], got["kid"], got["kid_std"], got["class_accuracy"]) == (
                    want["fid"], want["kid"], want["kid_std"], want["accuracy"])
                for name in ("logits", "pixels"):
                    other = judges[name].scores(x, seed=1)
                    assert (got[f"fid_{name}"], got[f"kid_{name}"]) == (other["fid"], other["kid"])
                assert got["fid_pixels"] != got["fid_logits"] != got["fid"] != got["fid_pixels"]  # three spaces
            for f in runs[1]["results"]["floor"]:
                want = metrics.real_floor(clf, 8, seed=f["seed"], n_real=1000)
                assert {k: f[k] for k in want} == want
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "12"], "does not divide into 5 outer steps"),
    (["--budgets", "0"], "does not divide into 5 outer steps"),
    (["--percents", "0"], "outside (0, 100]"),
    (["--percents", "120"], "outside (0, 100]"),
    (["--percents", "10"], "before Nested Diffusion's first preview"),
    (["--samples", "1"], "at least 2 samples"),
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


def torchrun_parser():
    from torch.distributed.run import get_args_parser

    return get_args_parser()


def test_resume_reads_back_finished_micro_batches_and_refuses_other_settings(tmp_path):
    """--resume: a run cut off after some micro-batches, run again, gives the uninterrupted run's numbers bit for
    bit and samples only what was missing; a part made with other settings is refused, never mixed in."""
    sweep = load_script()
    argv = ["--budgets", "10", "--percents", "50", "100", "--samples", "8", "--batch", "4", "--seeds", "0",
            "--allow-dirty", "--resume", "--out", str(tmp_path)]
    whole = sweep.main(argv)
    parts = sorted((tmp_path / "parts").glob("*.pt"))
    assert [p.name for p in parts] == ["budget10-seed0-0000000-0000004.pt", "budget10-seed0-0000004-0000008.pt"]
    assert json.loads((tmp_path / "results.json").read_text())["results"]["time"]["resumed_micro_batches"] == 0
    parts[1].unlink()  # as if the run had been stopped after its first micro-batch
    again = sweep.main(argv)
    assert again["rows"] == whole["rows"] and again["floor"] == whole["floor"]
    saved = json.loads((tmp_path / "results.json").read_text())["results"]
    assert saved["time"]["resumed_micro_batches"] == 1 and parts[1].exists()
    assert saved["image_nfe"] == 2 * 10 * 8  # the read-back batch's NFEs still count: the result is one whole run
    with pytest.raises(SystemExit, match=r"other settings \(guidance: 1\.5 there, 2\.0 now\)"):
        sweep.main([*argv, "--guidance", "2"])


def test_no_option_of_the_sweep_is_a_prefix_of_a_torchrun_option():
    """torchrun's parser (argparse, abbreviations allowed) reads an option of the script as an abbreviation of its own
    when it is a prefix of one, e.g. `--n` of --nnodes and --nproc-per-node ("ambiguous option"), unless the user
    puts `--` before the script. No option of the sweep may be one (help is argparse's own, for either program)."""
    theirs = [o for a in torchrun_parser()._actions for o in a.option_strings]
    ours = [o for a in load_script().parser()._actions for o in a.option_strings if o not in ("-h", "--help")]
    clashes = {o: [t for t in theirs if t.startswith(o)] for o in ours}
    assert not {o: t for o, t in clashes.items() if t}


def test_torchrun_hands_the_whole_command_line_to_the_sweep():
    """`torchrun --nproc_per_node 2 scripts/sweep.py ...` without `--`: torchrun keeps every option of the sweep
    for the script, and the sweep parses them."""
    sweep = load_script()
    argv = ["--model", "mnist-dit", "--budgets", "100", "150", "--percents", "20", "100", "--samples", "200",
            "--seeds", "0", "1", "--guidance", "1.5", "--preset", "paper", "--outer", "5", "--batch", "50",
            "--judges", "classifier", "pixels", "--device", "cpu", "--out", "runs/x", "--resume", "--allow-dirty"]
    assert {o for o in argv if o.startswith("--")} | {"--unconditional"} == {
        o for a in sweep.parser()._actions for o in a.option_strings if o not in ("-h", "--help")}  # every option
    run = torchrun_parser().parse_args(["--nproc_per_node", "2", str(SCRIPT), *argv])
    assert run.nproc_per_node == "2" and run.training_script == str(SCRIPT) and run.training_script_args == argv
    args = sweep.parse_args(run.training_script_args)
    assert (args.n, args.budgets, args.seeds, args.judges) == (200, [100, 150], [0, 1], ["classifier", "pixels"])
    assert args.resume
    run = torchrun_parser().parse_args(["--nproc_per_node", "2", str(SCRIPT), "--unconditional", "--samples", "10"])
    assert sweep.parse_args(run.training_script_args).guidance == 1.0


def test_no_chapter_imports_scripts_and_results_hold_no_python():
    """What a chapter shares with a script lives in nestedlib (e.g. nestedlib.sweep, nestedlib.metrics.Judge): no
    chapter puts scripts/ on sys.path or imports a script; results/ folders hold data and the command that wrote them
    (the scripts live in scripts/)."""
    import nbformat

    scripts = {p.stem for p in (ROOT / "scripts").glob("*.py")}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(nb, as_version=4).cells:
            if cell.cell_type != "code":
                continue
            for line in cell.source.splitlines():
                words = line.split("#")[0].split()
                assert not ("sys.path" in line and "scripts" in line), f"{nb.name}: {line}"
                if words[:1] == ["import"]:
                    assert not {w.strip(",") for w in words[1:]} & scripts, f"{nb.name} imports a script: {line}"
                if words[:1] == ["from"] and len(words) > 1:
                    assert words[1] not in scripts and not words[1].startswith("scripts"), f"{nb.name}: {line}"
    assert not [str(p.relative_to(ROOT)) for p in (ROOT / "results").rglob("*") if p.suffix in (".py", ".ipynb")]
