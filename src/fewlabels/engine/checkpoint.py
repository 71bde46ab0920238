"""Checkpoints as safetensors (every tensor) plus JSON (everything else), written atomically.

Nested state (model, EMA, optimizer, algorithm, RNG) is flattened: tensors go to the safetensors file under dotted
keys and are replaced in the JSON tree by {"__tensor__": key}. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fewlabels.errors import CheckpointError
from fewlabels.io import atomic_write_text

TENSORS = "checkpoint.safetensors"
META = "checkpoint.json"


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move tensors out of a nested structure into `tensors`, returning the JSON-able remainder."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[k, flatten(v, f"{prefix}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, list | tuple):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten`."""
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (nested dicts of tensors and JSON values) to folder/checkpoint.{safetensors,json}.

    The tensors file is written under a step-specific name first and the JSON that points to it last, so a kill
    at any moment leaves the previous complete checkpoint readable.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(state, "s", tensors)
    name = f"checkpoint-{state.get('step', 0)}.safetensors"
    tmp = folder / f".{name}.tmp"
    # safetensors refuses tensors that share memory; clone those that do.
    save_file({k: v.clone() for k, v in tensors.items()}, str(tmp))
    with open(tmp, "rb") as f:  # on disk before the JSON points at it, so a power cut cannot leave it half written
        os.fsync(f.fileno())
    os.replace(tmp, folder / name)
    previous = _tensor_file(folder)
    atomic_write_text(folder / META, json.dumps({"tensors": name, "state": tree}))
    if previous and previous != name:
        (folder / previous).unlink(missing_ok=True)


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / META).read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), str) or "state" not in meta:
            raise ValueError("not a fewlabels checkpoint")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(
            f"{folder / META} is unreadable ({type(e).__name__}: {e}); restore it, or train into a new --out folder"
        ) from e
    return meta


def _tensor_file(folder: Path) -> str | None:
    if not (folder / META).exists():
        return None
    return _read_meta(folder)["tensors"]


def has_checkpoint(folder: str | Path) -> bool:
    """True if folder holds a complete checkpoint."""
    name = _tensor_file(Path(folder))
    return name is not None and (Path(folder) / name).exists()


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read what `save_checkpoint` wrote."""
    folder = Path(folder)
    meta = _read_meta(folder)
    try:
        tensors = load_file(str(folder / meta["tensors"]), device=str(device))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(
            f"cannot read {folder / meta['tensors']} ({e}); restore it, or train into a new --out folder"
        ) from e
    return unflatten(meta["state"], tensors)
