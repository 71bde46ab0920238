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
from safetensors.torch import load_file, save_file

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
    os.replace(tmp, folder / name)
    previous = _tensor_file(folder)
    atomic_write_text(folder / META, json.dumps({"tensors": name, "state": tree}))
    if previous and previous != name:
        (folder / previous).unlink(missing_ok=True)


def _tensor_file(folder: Path) -> str | None:
    meta = folder / META
    if not meta.exists():
        return None
    return json.loads(meta.read_text())["tensors"]


def has_checkpoint(folder: str | Path) -> bool:
    """True if folder holds a complete checkpoint."""
    name = _tensor_file(Path(folder))
    return name is not None and (Path(folder) / name).exists()


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read what `save_checkpoint` wrote."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    tensors = load_file(str(folder / meta["tensors"]), device=str(device))
    return unflatten(meta["state"], tensors)
