"""What every chapter needs around the sampler: the device to run on and a results file for its claims."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch


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
