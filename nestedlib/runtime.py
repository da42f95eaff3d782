"""What every chapter needs around the sampler: the device and CPU threads to run on, and a results file for its claims."""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .schedules import positive_int

THREADS_VARIABLE = "NESTEDLIB_THREADS"


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks the GPU when one is present, else the CPU; 'cpu', 'cuda', 'cuda:1', 'mps' are taken as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} was asked for but no GPU is visible; use device='auto' or 'cpu'")
    return dev


def set_threads(threads: int | None = None) -> int:
    """Torch's CPU threads for this process: `threads`, else $NESTEDLIB_THREADS, else 1 (benchmarks/threads.py).

    One thread is the measured choice: beside one busy process, torch with as many threads as cores runs several
    times slower than idle (its threads wait for each other), while one thread stays near its idle speed; the book
    build fills the cores by running chapters side by side instead (scripts/execute_chapters.py).
    """
    if threads is None:
        env = os.environ.get(THREADS_VARIABLE, "").strip()
        if env:
            try:
                threads = int(env)
            except ValueError:
                raise ValueError(f"${THREADS_VARIABLE} must be a positive integer, got {env!r}; unset it for 1 thread") from None
        else:
            threads = 1
    threads = positive_int("threads", threads, f"a positive integer (or unset ${THREADS_VARIABLE} for 1)")
    torch.set_num_threads(threads)
    return threads


def progress(iterable, desc: str | None = None, total: int | None = None):
    """A text progress bar on stderr over a long cell's loop: a live notebook shows it, the book build drops stderr."""
    from tqdm.std import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, mininterval=2)


def _jsonable(v: Any) -> Any:
    if torch.is_tensor(v):
        return v.tolist()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (torch.device, Path)):
        return str(v)
    return v


def save_results(out_dir: str | Path, parameters: dict[str, Any], **results: Any) -> Path:
    """Write results.json next to the executed chapter: its parameters (seed, model, ...) and the figures a claim rests on."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "parameters": _jsonable(parameters),
        "results": _jsonable(results),
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
    }
    path = out / "results.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def provenance(root: str | Path) -> dict:
    """The code a script runs: {"commit": HEAD of the checkout at `root`, with '+dirty' when files differ from it,
    "modified": the changed or untracked files (git status --porcelain)}, or commit "unknown" outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "modified": []}
    modified = [line[3:] for line in status.stdout.splitlines() if line.strip()]
    return {"commit": head.stdout.strip() + ("+dirty" if modified else ""), "modified": modified}


def check_clean(root: str | Path, allow_dirty: bool, script: str) -> dict:
    """provenance(root), or exit with what to do when the tree has uncommitted changes and allow_dirty is False: a
    committed result must name a commit that regenerates it."""
    code = provenance(root)
    if code["modified"] and not allow_dirty:
        shown = ", ".join(code["modified"][:8]) + (", ..." if len(code["modified"]) > 8 else "")
        sys.exit(f"{script}: the working tree has uncommitted changes ({shown}), so no commit would regenerate "
                 "these results. Commit (or stash) them and run again, or pass --allow-dirty to run anyway; the "
                 "results then record the commit as '<commit>+dirty' with the list of changed files.")
    return code


def machine(device: str | torch.device = "cpu") -> dict:
    """Where a result was computed: host, CPU model, core count, GPU, platform and torch version."""
    device = torch.device(device)
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {"host": socket.gethostname(), "cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu,
            "platform": platform.platform(), "torch": torch.__version__}
