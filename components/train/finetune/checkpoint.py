"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder `step-NNNNNNN/` written atomically (temp folder + rename), so a
run killed with SIGKILL at any moment leaves either the complete folder or none:
    weights.safetensors   trainable parameters (full model, or adapter + head)
    best.safetensors      trainable parameters at the best evaluation so far (optional)
    state.safetensors     tensors of the nested training state (optimizer moments, RNG)
    state.json            the rest of that state, tensors replaced by references
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from components.io import atomic_dir, atomic_write_json, read_json

_STEP_DIR = re.compile(r"^step-(\d{7})$")
_TENSOR_REF = "__tensor__"
_TUPLE_REF = "__tuple__"


def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """JSON-able copy of `obj`; each tensor is moved into `tensors` and left as a reference.

    Handles nested dicts (any key type, restored by type), lists, tuples and scalars.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR_REF: key}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, tensors, prefix), flatten_state(v, tensors, prefix)]
                             for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE_REF: [flatten_state(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [flatten_state(v, tensors, prefix) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}")


def unflatten_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(obj, list):
        return [unflatten_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if _TENSOR_REF in obj:
        return tensors[obj[_TENSOR_REF]]
    if _TUPLE_REF in obj:
        return tuple(unflatten_state(v, tensors) for v in obj[_TUPLE_REF])
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in obj["__dict__"]}


def rng_state() -> dict[str, Any]:
    """Every RNG the training touches: torch (dropout, init), Python and NumPy."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": np.random.get_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np.random.set_state(tuple(state["numpy"]))


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters that training changes."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` into the model's trainable parameters in place; names must match."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise ValueError(f"checkpoint does not match the model (missing {missing[:3]}, "
                         f"unexpected {unknown[:3]})")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def save_checkpoint(root: Path, step: int, model: torch.nn.Module, state: dict[str, Any],
                    best: dict[str, torch.Tensor] | None, keep: int) -> Path:
    """Write `root/step-NNNNNNN` atomically, then drop all but the newest `keep`."""
    path = Path(root) / f"step-{step:07d}"
    with atomic_dir(path) as tmp:
        # CPU tensors: a checkpoint made on a GPU resumes anywhere (load_trainable copies
        # the values onto the model's device).
        save_file({n: t.cpu() for n, t in trainable_state(model).items()},
                  str(tmp / "weights.safetensors"))
        if best is not None:
            save_file({n: t.cpu() for n, t in best.items()}, str(tmp / "best.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        flat = flatten_state(state, tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        atomic_write_json(tmp / "state.json", flat)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temp folders of a killed write are skipped)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                         dict[str, torch.Tensor] | None]:
    """(trainable weights, training state, best weights or None) of one checkpoint folder."""
    path = Path(path)
    weights = load_file(str(path / "weights.safetensors"))
    state = unflatten_state(read_json(path / "state.json"),
                            load_file(str(path / "state.safetensors")))
    best_file = path / "best.safetensors"
    best = load_file(str(best_file)) if best_file.exists() else None
    return weights, state, best


def clear_checkpoints(root: Path) -> None:
    """Remove every checkpoint (and leftover temp folder) under `root` for a fresh run."""
    root = Path(root)
    if root.is_dir():
        for p in root.iterdir():
            if p.is_dir() and (_STEP_DIR.match(p.name) or p.name.startswith(".step-")):
                shutil.rmtree(p, ignore_errors=True)
