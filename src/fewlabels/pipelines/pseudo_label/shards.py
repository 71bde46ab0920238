"""Writing pseudo-label folders: `pseudo_label` runs the teacher over a pool shard by shard (resumable, also
under torchrun), `write_probs` stores given probabilities; both check or create the manifest first."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from fewlabels.augment import to_float
from fewlabels.engine.distributed import DistInfo, cleanup, init_distributed
from fewlabels.errors import ConfigError, DataError
from fewlabels.io import atomic_write_bytes, atomic_write_text
from fewlabels.pipelines.pseudo_label.labels import (
    FILES,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SHARD_KEYS,
    PseudoLabels,
    _shard_done,
    _shard_range,
    shard_name,
)
from fewlabels.pipelines.pseudo_label.sources import ArraySource, ItemSource, open_source


def _summarise(probs: Tensor, k: int, full: bool) -> dict[str, Tensor]:
    """Top-k probabilities (descending) and classes, the remaining mass, and the full rows when asked."""
    top_p, top_c = probs.topk(k, dim=-1, largest=True, sorted=True)
    out = {
        "topk_probs": top_p.float().cpu(),
        "topk_classes": top_c.to(torch.int64).cpu(),
        "rest_mass": (1.0 - top_p.sum(-1)).clamp_min_(0.0).float().cpu(),
    }
    if full:
        out["probs"] = probs.float().cpu()
    return out


def _write_shard(path: Path, i: int, start: int, stop: int, parts: list[dict[str, Tensor]], rank: int = 0) -> None:
    tensors = {"index": torch.arange(start, stop, dtype=torch.int64)}
    for key in parts[0]:
        tensors[key] = torch.cat([p[key] for p in parts]).contiguous()
    # `rank`: the torchrun rank that labelled the shard (each rank takes whole shards), for provenance.
    meta = {"format": FORMAT, "shard": str(i), "start": str(start), "stop": str(stop), "rank": str(rank)}
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 18), b""):
            h.update(block)
    return h.hexdigest()


# Manifest entries that must agree for a restart to continue an existing folder, with how to name them.
_IDENTITY = [
    (("format_version",), "format version"),
    (("teacher", "weights_sha256"), "teacher weights (sha256)"),
    (("teacher", "which"), "teacher model (--which)"),
    (("data", "kind"), "kind of data"),
    (("data", "length"), "data length"),
    (("data", "fingerprint"), "data (sha256 of its first, middle and last item)"),
    (("data", "files_sha256"), "file list (sha256 of files.txt)"),
    (("num_classes",), "number of classes"),
    (("shard_size",), "shard_size"),
    (("top_k",), "top_k"),
    (("temperature",), "temperature"),
    (("full",), "full"),
]


def _get(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)  # type: ignore[assignment]
    return d


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for keys, label in _IDENTITY:
        a, b = _get(old, keys), _get(new, keys)
        if a != b:
            if isinstance(a, str) and isinstance(b, str) and len(a) == 64 and len(b) == 64:
                a, b = a[:12] + "...", b[:12] + "..."
            out.append(f"{label} was {a!r}, now {b!r}")
    return out


def _prepare_out(out: Path, manifest: dict[str, Any], files: list[str] | None) -> str | None:
    """Create `out` with its manifest, or check that an existing one matches; the refusal message, or None."""
    path = out / MANIFEST
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"{path} cannot be read ({e}); pass a new --out, or delete {out} to start over"
        diffs = _differences(old, manifest)
        if diffs:
            return (
                f"{out} holds pseudo-labels made with other arguments: {'; '.join(diffs)}. Pass a new --out (or "
                f"delete {out}) to start over, or rerun with the earlier teacher, data and settings to finish it"
            )
    else:
        # files.txt alone is ours: a first start killed between writing it and the manifest.
        if out.exists() and any(not p.name.startswith(".") and p.name != FILES for p in out.iterdir()):
            return (
                f"{out} already holds files but no {MANIFEST}, so it is not a pseudo-label folder fewlabels can "
                "continue: pass a new, empty --out"
            )
        out.mkdir(parents=True, exist_ok=True)
        if files is not None:
            atomic_write_text(out / FILES, "".join(f + "\n" for f in files))
        atomic_write_text(path, json.dumps(manifest, indent=2))
    for stale in out.glob(".shard-*.tmp"):  # temp files of a killed writer
        stale.unlink(missing_ok=True)
    return None


def _build_manifest(
    run: Any,
    which: str,
    info: dict[str, Any],
    source: ItemSource,
    files_sha: str | None,
    shard_size: int,
    k: int,
    temperature: float,
    full: bool,
    image_size: int | None,
) -> dict[str, Any]:
    import fewlabels

    n = len(source)
    data = source.describe()
    data["fingerprint"] = source.fingerprint()
    if files_sha is not None:
        data["files"] = FILES
        data["files_sha256"] = files_sha
    weights = Path(run.path) / f"{which}.safetensors"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fewlabels_version": getattr(fewlabels, "__version__", "unknown"),
        "teacher": {
            "run": str(Path(run.path).resolve()),
            "which": which,
            "weights": weights.name,
            "weights_sha256": _sha256_file(weights),
            "mode": "eval (no dropout or stochastic depth, BatchNorm running statistics); un-augmented inputs",
        },
        "preprocessing": {
            "model": info["model"],
            "input_shape": list(info["input_shape"]),
            "mean": info["mean"],
            "std": info["std"],
            "modality": info.get("modality"),
            "scale": "uint8 pixels / 255 to [0, 1]; float inputs as given; the model normalises with mean/std",
            "train_image_size": image_size,
            "resize": data.get("resize"),
        },
        "classes": list(info["classes"]),
        "num_classes": int(info["num_classes"]),
        "data": data,
        "shard_size": shard_size,
        "num_shards": math.ceil(n / shard_size),
        "top_k": k,
        "temperature": float(temperature),
        "full": bool(full),
        "shard_keys": [*SHARD_KEYS, *(["probs"] if full else [])],
    }


def _broadcast(obj: Any, info: DistInfo) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def _check_settings(shard_size: int, batch_size: int, top_k: int, temperature: float) -> None:
    for name, value in (("shard_size", shard_size), ("batch_size", batch_size), ("top_k", top_k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number (1 = the teacher's own softmax), got {temperature!r}")


def pseudo_label(
    teacher: str | Path,
    data: str | Path | Tensor | np.ndarray,
    out: str | Path,
    *,
    which: str = "model",
    shard_size: int = 10_000,
    batch_size: int = 512,
    top_k: int = 5,
    full: bool = False,
    temperature: float = 1.0,
    device: str = "auto",
    progress: bool = True,
    data_root: str | None = None,
) -> PseudoLabels:
    """Label every item of `data` with the teacher run's soft predictions, in shards under `out`; return them.

    The teacher is `Run(teacher).load_model(which)` in eval mode on un-augmented inputs (Noisy Student: the
    teacher is not noised); labels are softmax(logits / temperature). `data` is anything `open_source` takes; a
    built-in dataset is loaded as the teacher was trained (its `data.image_size`, and `data_root` or the teacher's).
    Each shard of `shard_size` consecutive items is inferred in batches of `batch_size` and written atomically
    as `shard-NNNNN.safetensors` with the top-`top_k` probabilities and classes and the remaining mass (and the
    full probability rows with `full=True`). Rerunning with the same arguments skips finished shards; other
    arguments on an existing `out` are refused. Under torchrun, rank r labels shards r, r + W, ...; every rank
    returns once all shards are written.
    """
    from fewlabels.engine.run import Run
    from fewlabels.engine.setup import resolve_device

    _check_settings(shard_size, batch_size, top_k, temperature)
    run = Run(teacher)
    info = run.model_info(which)
    input_shape = tuple(int(s) for s in info["input_shape"])
    num_classes = int(info["num_classes"])
    k = min(top_k, num_classes)
    teacher_data = run.config.data
    image_size = teacher_data.image_size
    out = Path(out).expanduser()

    owns_group = not (dist.is_available() and dist.is_initialized())
    dinfo = init_distributed(device)
    try:
        dev = resolve_device(device)
        if dev.type == "cuda" and dinfo.enabled:
            dev = torch.device("cuda", dinfo.local_rank)
        source = open_source(
            data,
            input_shape,
            root=data_root if data_root is not None else teacher_data.data_root,
            download=False,
            image_size=image_size,
        )
        n = len(source)
        if n == 0:
            raise DataError(f"{'the pool' if isinstance(data, Tensor | np.ndarray) else data} holds no items to label")
        num_shards = math.ceil(n / shard_size)

        error = None
        if dinfo.is_main:
            try:
                files = source.names(0, n)
                files_sha = hashlib.sha256("".join(f + "\n" for f in files).encode()).hexdigest() if files else None
                manifest = _build_manifest(
                    run, which, info, source, files_sha, shard_size, k, temperature, full, image_size
                )
                error = _prepare_out(out, manifest, files)
            except Exception as e:  # hand the failure to every rank instead of leaving them at the barrier
                if not dinfo.enabled:
                    raise
                error = f"{type(e).__name__}: {e}"
        error = _broadcast(error, dinfo)
        if error is not None:
            raise ConfigError(error)
        _barrier(dinfo)

        model = run.load_model(which).to(dev).eval()
        mine = range(dinfo.rank, num_shards, dinfo.world_size)
        todo = [i for i in mine if not _shard_done(out / shard_name(i), *_shard_range(i, n, shard_size), full)]
        mine_items = sum(min(shard_size, n - i * shard_size) for i in mine)
        todo_items = sum(min(shard_size, n - i * shard_size) for i in todo)
        bar = _progress_bar(progress and dinfo.is_main, mine_items, mine_items - todo_items, dinfo)
        try:
            with torch.inference_mode():
                for i in todo:
                    start, stop = _shard_range(i, n, shard_size)
                    parts = []
                    for b in range(start, stop, batch_size):
                        x = source.read(b, min(b + batch_size, stop))
                        logits = model(to_float(x.to(dev, non_blocking=True))).float()
                        parts.append(_summarise((logits / temperature).softmax(-1), k, full))
                        if bar is not None:
                            bar.update(len(x))
                    _write_shard(out / shard_name(i), i, start, stop, parts, rank=dinfo.rank)
                    del parts
        finally:
            if bar is not None:
                bar.close()
        _barrier(dinfo)
    finally:
        if owns_group:
            cleanup(dinfo)
    return PseudoLabels(out)


def _progress_bar(show: bool, total: int, initial: int, dinfo: DistInfo) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    desc = "pseudo-label" + (f" (rank 0 of {dinfo.world_size})" if dinfo.enabled else "")
    return tqdm(total=total, initial=initial, unit="img", unit_scale=True, desc=desc, dynamic_ncols=True)


def write_probs(
    out: str | Path,
    probs: Tensor,
    *,
    classes: Sequence[str] | None = None,
    shard_size: int = 10_000,
    top_k: int = 5,
    full: bool = False,
) -> PseudoLabels:
    """Write given probability rows (N x C, each summing to 1) as a pseudo-label folder, with no teacher.

    For labels computed elsewhere and for tests; `out` must be new or empty. The manifest's teacher is null.
    """
    _check_settings(shard_size, 1, top_k, 1.0)
    probs = torch.as_tensor(probs, dtype=torch.float32)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ConfigError(f"probs must be a non-empty (N, C) matrix, got shape {tuple(probs.shape)}")
    n, c = probs.shape
    names = list(classes) if classes is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ConfigError(f"{len(names)} class names for {c} probability columns")
    k = min(top_k, c)
    source = ArraySource(probs, (c,))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "teacher": None,
        "preprocessing": None,
        "classes": names,
        "num_classes": c,
        "data": {**source.describe(), "kind": "probs", "fingerprint": source.fingerprint()},
        "shard_size": shard_size,
        "num_shards": math.ceil(n / shard_size),
        "top_k": k,
        "temperature": 1.0,
        "full": bool(full),
        "shard_keys": [*SHARD_KEYS, *(["probs"] if full else [])],
    }
    out = Path(out).expanduser()
    error = _prepare_out(out, manifest, None)
    if error is not None:
        raise ConfigError(error)
    for i in range(manifest["num_shards"]):
        start, stop = _shard_range(i, n, shard_size)
        _write_shard(out / shard_name(i), i, start, stop, [_summarise(probs[start:stop], k, full)])
    return PseudoLabels(out)
