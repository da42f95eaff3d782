"""What every chapter needs around the sampler: the device and CPU threads to run on, and a results file for its claims."""
from __future__ import annotations

import json
import os
import platform
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
