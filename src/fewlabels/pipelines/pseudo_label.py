"""Teacher pseudo-labels for an unlabeled pool of any size, and Noisy Student's filtering and class balancing.

`pseudo_label` runs a finished run's model (the teacher) over a pool, in eval mode (no dropout or stochastic
depth, BatchNorm running statistics) on un-augmented inputs, as Noisy Student prescribes: the teacher is not
noised. The pool is streamed from an `ItemSource` (an in-memory tensor, a memory-mapped `.npy` file, an image
folder or CSV manifest, or a built-in dataset) in shards of `shard_size` consecutive items; each finished shard is
one safetensors file written atomically, so an interrupted job restarts where it stopped, and memory never holds
more than one shard's outputs and one batch of inputs, whatever the pool size.

Output folder::

    manifest.json            format, teacher (run, weights sha256, preprocessing), data, settings, shard count
    files.txt                for image files: the file of each row, one absolute path a line
    shard-00000.safetensors  index (int64 rows of the source), topk_probs (float32 n x k, descending),
    shard-00001.safetensors  topk_classes (int64 n x k), rest_mass (float32 n), probs (n x C, with full=True)
    ...

Under torchrun every rank takes whole shards (rank r: shards r, r + W, r + 2W, ...). `PseudoLabels` reads a
finished folder and `select` applies Noisy Student's filtering (max probability >= 0.3) and per-class balancing
(keep the most confident N per class, duplicate under-filled classes with stochastic rounding), streaming over
the shards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from fewlabels.augment import to_float
from fewlabels.data.formats import fit_image, image_files_under, manifest_paths
from fewlabels.engine.distributed import DistInfo, cleanup, init_distributed
from fewlabels.errors import ConfigError, DataError
from fewlabels.io import atomic_write_bytes, atomic_write_text

FORMAT = "fewlabels-pseudo-labels"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = "files.txt"
SHARD_KEYS = ("index", "topk_probs", "topk_classes", "rest_mass")
SELECTION_FORMAT = "fewlabels-pseudo-label-selection"

__all__ = [
    "ArraySource",
    "ImageFileSource",
    "ItemSource",
    "NpySource",
    "PseudoLabels",
    "Selection",
    "open_source",
    "pseudo_label",
    "select",
    "shard_name",
    "write_probs",
]


# ================================================================================================= sources


class ItemSource(ABC):
    """A pool of items read in slices: `len(source)` items, `read(start, stop)` gives rows start..stop-1.

    `read` returns a batch the teacher can take: uint8 images (N, C, H, W), float images in [0, 1], or float
    vectors (N, D). Implementations must never need the whole pool in memory to serve a slice.
    """

    kind: str = "items"

    @abstractmethod
    def __len__(self) -> int:
        """Number of items in the pool."""

    @abstractmethod
    def read(self, start: int, stop: int) -> Tensor:
        """Items start..stop-1 as one batch tensor."""

    def names(self, start: int, stop: int) -> list[str] | None:
        """File names of items start..stop-1, for sources backed by files; None otherwise."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the pool is, for the manifest (JSON-serialisable)."""
        return {"kind": self.kind, "length": len(self)}

    def fingerprint(self) -> str:
        """sha256 over 33 items spread evenly over the pool (first and last included): tells two pools of equal
        length apart cheaply, so a restart does not mix labels of a changed pool into old shards. (A change to
        items between the sampled ones goes unnoticed: write a changed pool to a new --out.)"""
        n = len(self)
        h = hashlib.sha256()
        for i in sorted({int(v) for v in np.linspace(0, n - 1, num=min(n, 33))}) if n else []:
            x = self.read(i, i + 1).contiguous().cpu()
            h.update(f"{i}:{tuple(x.shape)}:{x.dtype}".encode())
            h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())  # the raw bytes, whatever the dtype
        return h.hexdigest()


def _layout(shape: tuple[int, ...], input_shape: tuple[int, ...], what: str) -> str:
    """How stored items of `shape` (without N) map to the teacher's input: 'same', 'hw' (add C=1) or 'hwc'."""
    if shape == input_shape:
        return "same"
    if len(input_shape) == 3:
        c, h, w = input_shape
        if c == 1 and shape == (h, w):
            return "hw"
        if shape == (h, w, c):
            return "hwc"
        fix = (
            f"store the pool as ({c}, {h}, {w}) uint8 images first (fewlabels.data.sources.resize_images(x, {h}) "
            f"resizes uint8 NCHW batches), or use a teacher trained on {shape}"
            if h == w
            else f"store the pool as ({c}, {h}, {w}) images first, or use a teacher trained on {shape}"
        )
    else:
        fix = f"give float vectors of length {input_shape[0]}, an array of shape (N, {input_shape[0]})"
    raise ConfigError(f"{what} holds items of shape {shape}, but the teacher takes {input_shape}: {fix}")


def _dtype_kind(dtype: Any) -> str:
    """'uint8', 'float' or 'other' for a numpy or torch dtype."""
    if isinstance(dtype, torch.dtype):
        return "uint8" if dtype == torch.uint8 else ("float" if dtype.is_floating_point else "other")
    dt = np.dtype(dtype)
    return "uint8" if dt == np.uint8 else ("float" if dt.kind == "f" else "other")


def _check_dtype(dtype: Any, input_shape: tuple[int, ...], what: str) -> None:
    """Images must be uint8 (0..255) or floats in [0, 1]; vectors must be floats."""
    kind = _dtype_kind(dtype)
    if len(input_shape) == 1 and kind != "float":
        raise ConfigError(f"{what} has dtype {dtype}, but the teacher takes float vectors: convert to float32")
    if kind == "other":
        raise ConfigError(
            f"{what} has dtype {dtype}; images must be uint8 (0..255) or floats in [0, 1]: convert with "
            "x.astype(np.uint8) (values 0..255) or x / 255"
        )


def _apply_layout(x: Tensor, layout: str) -> Tensor:
    if layout == "hw":
        return x.unsqueeze(1)
    if layout == "hwc":
        return x.permute(0, 3, 1, 2).contiguous()
    return x


class ArraySource(ItemSource):
    """An in-memory tensor or numpy array (e.g. a DataBundle's x_train); item i is row i.

    `kind` and `extra` only change how the manifest describes it (a dataset's name, an .npz path).
    """

    def __init__(
        self,
        x: Tensor | np.ndarray,
        input_shape: Sequence[int],
        what: str = "the tensor",
        kind: str = "tensor",
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.x = x
        self.kind = kind
        self.extra = dict(extra or {})
        self.input_shape = tuple(int(s) for s in input_shape)
        if x.ndim < 2:
            raise ConfigError(f"{what} has shape {tuple(x.shape)}; give a batch of items, shape (N, ...)")
        _check_dtype(x.dtype, self.input_shape, what)
        self.layout = _layout(tuple(int(s) for s in x.shape[1:]), self.input_shape, what)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def read(self, start: int, stop: int) -> Tensor:
        chunk = self.x[start:stop]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.array(chunk, order="C"))
        return _apply_layout(chunk, self.layout)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "item_shape": [int(s) for s in self.x.shape[1:]],
            "dtype": str(self.x.dtype).replace("torch.", ""),
            **self.extra,
        }


class NpySource(ItemSource):
    """A `.npy` array read through a memory map: the format for pools larger than memory.

    Write one with `np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(N, C, H, W))` and fill it in
    chunks. Items are uint8 (N, C, H, W) / (N, H, W) / (N, H, W, C) images, float images in [0, 1], or float
    vectors (N, D). Each `read` maps the file, copies the slice and unmaps it again, so resident memory holds one
    batch, not every page touched so far (a long-lived map would keep the whole file resident once read).
    """

    kind = "npy"

    def __init__(self, path: str | Path, input_shape: Sequence[int]) -> None:
        self.path = Path(path).expanduser().resolve()
        self.input_shape = tuple(int(s) for s in input_shape)
        arr = self._open()
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = arr.dtype
        del arr
        if len(self.shape) < 2:
            raise ConfigError(
                f"{self.path} holds an array of shape {self.shape}; give a batch of items, shape (N, ...)"
            )
        _check_dtype(self.dtype, self.input_shape, str(self.path))
        self.layout = _layout(self.shape[1:], self.input_shape, str(self.path))

    def _open(self) -> np.ndarray:
        try:
            return np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(
                f"cannot read {self.path} as a .npy array ({type(e).__name__}: {e}); save it with np.save or "
                "np.lib.format.open_memmap (numeric dtypes only, no pickled objects)"
            ) from e

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> Tensor:
        arr = self._open()
        chunk = np.array(arr[start:stop], order="C")  # a copy: the map is released when `arr` goes
        del arr
        return _apply_layout(torch.from_numpy(chunk), self.layout)

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "path": str(self.path),
            "item_shape": list(self.shape[1:]),
            "dtype": str(self.dtype),
        }


class ImageFileSource(ItemSource):
    """Image files, decoded per batch with the `ImageReader` of `fewlabels predict` and fitted to the teacher.

    Each image is converted to the teacher's channel count (L or RGB) and, when its size differs, resized to the
    teacher's H x W (bicubic), exactly as `fewlabels predict` reads files. An unreadable file is an error: rows
    map to files, so a file cannot be skipped silently.
    """

    def __init__(self, files: Sequence[Path], input_shape: Sequence[int], kind: str, origin: Path) -> None:
        self.files = [Path(f) for f in files]
        self.input_shape = tuple(int(s) for s in input_shape)
        self.kind = kind
        self.origin = origin
        if len(self.input_shape) != 3:
            raise ConfigError(
                f"the teacher takes vectors of shape {self.input_shape}, not images: give a .npy of (N, D)"
            )
        if not self.files:
            raise DataError(f"no image files found in {origin} (extensions: png, jpg, jpeg, bmp, gif, tif, webp, ...)")
        bad = next((f for f in self.files if "\n" in str(f) or "\r" in str(f)), None)
        if bad is not None:
            raise DataError(f"file name {str(bad)!r} contains a line break; rename it")

    @classmethod
    def from_folder(cls, folder: str | Path, input_shape: Sequence[int]) -> ImageFileSource:
        """Every image under `folder`, at any depth, sorted by path; hidden files and folders are left out."""

        root = Path(folder).expanduser().resolve()
        files = image_files_under(root)
        return cls(files, input_shape, "folder", root)

    @classmethod
    def from_csv(cls, path: str | Path, input_shape: Sequence[int]) -> ImageFileSource:
        """The `path` column of a CSV (relative to the CSV's folder, or absolute), in row order."""
        csv_path = Path(path).expanduser().resolve()
        files = manifest_paths(csv_path, check_exists=False)
        return cls(files, input_shape, "csv", csv_path)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, start: int, stop: int) -> Tensor:
        from fewlabels.data.formats import ImageReader

        reader = ImageReader(strict=True, image_size=None)
        out = np.empty((stop - start, *self.input_shape), dtype=np.uint8)
        for row, path in enumerate(self.files[start:stop]):
            try:
                arr = reader.read(path)
            except DataError as e:
                raise DataError(
                    f"cannot read image {path} (row {start + row} of {self.origin}): {e.__cause__ or e}; fix or "
                    "remove the file and start again with a new --out (the file list is part of the output)"
                ) from e
            out[row] = fit_image(arr, self.input_shape)  # type: ignore[arg-type]
        return torch.from_numpy(out)

    def names(self, start: int, stop: int) -> list[str]:
        return [str(f) for f in self.files[start:stop]]

    def describe(self) -> dict[str, Any]:
        c, h, w = self.input_shape
        return {
            **super().describe(),
            "path": str(self.origin),
            "resize": f"decoded as {'L' if c == 1 else 'RGB'}, resized bicubic to {w}x{h} when the size differs",
        }


def open_source(
    data: str | Path | Tensor | np.ndarray,
    input_shape: Sequence[int],
    *,
    root: str | None = None,
    download: bool = False,
    image_size: int | None = None,
) -> ItemSource:
    """The item source `data` names, checked against the teacher's `input_shape`.

    `data` is a tensor or array (rows are items), a `.npy` file (memory-mapped: the format for pools larger than
    memory), an `.npz` with an array `x` (loaded into memory), a folder of images (recursive, sorted by path), a
    `.csv` with a `path` column, or a built-in dataset name (its training inputs, in memory; `root`, `download`
    and `image_size` go to `load_dataset`, so pass the teacher's `data.image_size` to match its training data).
    """
    shape = tuple(int(s) for s in input_shape)
    if isinstance(data, Tensor | np.ndarray):
        return ArraySource(data, shape)
    text = str(data)
    if isinstance(data, str):
        from fewlabels.data.sources import DATASETS

        if text in DATASETS or text.strip().lower().replace("_", "-") in DATASETS:
            return _dataset_source(text, shape, root, download, image_size)
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageFileSource.from_folder(path, shape)
    suffix = path.suffix.lower()
    if path.is_file():
        if suffix == ".npy":
            return NpySource(path, shape)
        if suffix == ".npz":
            return _npz_source(path, shape)
        if suffix == ".csv":
            return ImageFileSource.from_csv(path, shape)
        raise ConfigError(
            f"cannot read {path} as a pool: give a .npy array (memory-mapped), an .npz with x, a .csv with a "
            "path column, a folder of images, or a built-in dataset name"
        )
    if suffix in (".npy", ".npz", ".csv") or os.sep in text or "/" in text:
        raise DataError(f"{text}: no such file or folder")
    # Not a path: let load_dataset name the unknown dataset and suggest close names.
    return _dataset_source(text, shape, root, download, image_size)


def _dataset_source(
    name: str, shape: tuple[int, ...], root: str | None, download: bool, image_size: int | None
) -> ArraySource:
    from fewlabels.data.sources import load_dataset

    bundle = load_dataset(name, root=root, download=download, image_size=image_size)
    extra = {"name": bundle.name, "split": "x_train", "image_size": image_size}
    return ArraySource(bundle.x_train, shape, what=f"dataset {bundle.name!r} (x_train)", kind="dataset", extra=extra)


def _npz_source(path: Path, shape: tuple[int, ...]) -> ArraySource:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path} has no array 'x' (found {z.files}); save the pool with np.savez(path, x=x)")
            x = z["x"]
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} as an .npz archive ({type(e).__name__}: {e})") from e
    return ArraySource(x, shape, what=str(path), kind="npz", extra={"path": str(path.resolve())})


# ================================================================================================== shards


def shard_name(i: int) -> str:
    """File name of shard i."""
    return f"shard-{i:05d}.safetensors"


def _shard_range(i: int, n: int, shard_size: int) -> tuple[int, int]:
    return i * shard_size, min((i + 1) * shard_size, n)


def _shard_done(path: Path, start: int, stop: int, full: bool) -> bool:
    """True when `path` is a readable shard whose index is exactly start..stop-1 (with every expected key)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if not set(SHARD_KEYS) <= keys or (full and "probs" not in keys):
                return False
            index = f.get_tensor("index")
    except Exception:  # a truncated or foreign file: redo it
        return False
    return index.shape == (stop - start,) and torch.equal(index, torch.arange(start, stop, dtype=torch.int64))


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


# ========================================================================================== reading labels


def _as_rows(rows: Sequence[int] | Tensor | np.ndarray, n: int, what: str = "rows") -> np.ndarray:
    arr = rows.cpu().numpy() if isinstance(rows, Tensor) else np.asarray(rows)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{what} must be integer positions in the pool, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.min() < 0 or arr.max() >= n:
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise ConfigError(f"{what} holds position {bad}, outside the pool of {n} items (0..{n - 1})")
    return arr


def _dense_rows(shard: dict[str, Tensor], num_classes: int) -> Tensor:
    """(n x C) probabilities: the full rows when stored, else top-k plus the rest spread over the other classes."""
    if "probs" in shard:
        return shard["probs"].float()
    top_p, top_c, rest = shard["topk_probs"], shard["topk_classes"], shard["rest_mass"]
    n, k = top_p.shape
    others = num_classes - k
    fill = rest / others if others > 0 else torch.zeros_like(rest)
    dense = fill[:, None].expand(n, num_classes).clone()
    dense.scatter_(1, top_c.long(), top_p)
    return dense


class PseudoLabels:
    """A pseudo-label folder written by `pseudo_label` (or `write_probs`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise ConfigError(
                f"{self.path} is not a pseudo-label folder (no {MANIFEST}): pass the --out of `fewlabels pseudo-label`"
            )
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"{manifest} is not a fewlabels pseudo-label manifest")
        if self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ConfigError(
                f"{self.path} was written by a newer fewlabels (format {self.manifest['format_version']}); upgrade"
            )

    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when `path` holds a pseudo-label manifest (finished or not; see `is_complete`)."""
        return (Path(path).expanduser() / MANIFEST).is_file()

    def __repr__(self) -> str:
        return f"PseudoLabels({str(self.path)!r}, items={self.num_items}, shards={self.num_shards})"

    def __len__(self) -> int:
        return self.num_items

    @property
    def num_items(self) -> int:
        """Items in the pool (rows 0..num_items-1 of the source)."""
        return int(self.manifest["data"]["length"])

    @property
    def classes(self) -> list[str]:
        """Class names of the teacher, index k -> name."""
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.manifest["num_classes"])

    @property
    def num_shards(self) -> int:
        """Number of shard files when complete."""
        return int(self.manifest["num_shards"])

    @property
    def shard_size(self) -> int:
        """Items per shard (the last may hold fewer)."""
        return int(self.manifest["shard_size"])

    @property
    def top_k(self) -> int:
        """Columns of topk_probs / topk_classes."""
        return int(self.manifest["top_k"])

    @property
    def full(self) -> bool:
        """Whether shards hold the full probability rows."""
        return bool(self.manifest["full"])

    def shard_path(self, i: int) -> Path:
        """Path of shard i."""
        return self.path / shard_name(i)

    def shard_range(self, i: int) -> tuple[int, int]:
        """(start, stop) rows of shard i."""
        return _shard_range(i, self.num_items, self.shard_size)

    def missing_shards(self) -> list[int]:
        """Shards not (completely) written yet."""
        return [
            i for i in range(self.num_shards) if not _shard_done(self.shard_path(i), *self.shard_range(i), self.full)
        ]

    def is_complete(self) -> bool:
        """True when every shard is written."""
        return not self.missing_shards()

    def files(self) -> list[str] | None:
        """The file of each row (image-file sources), or None for arrays and datasets."""
        path = self.path / FILES
        if not path.is_file():
            return None
        return path.read_text().splitlines()

    def resume_command(self) -> str:
        """The command that finishes (or repeats) this folder."""
        m = self.manifest
        teacher = m.get("teacher") or {}
        data = m["data"]
        where = data.get("name") or data.get("path") or f"<the same {data.get('kind', 'data')}>"
        opts = [f"--shard-size {m['shard_size']}", f"--top-k {m['top_k']}"]
        if m.get("temperature", 1.0) != 1.0:
            opts.append(f"--temperature {m['temperature']}")
        if m.get("full"):
            opts.append("--full")
        if teacher.get("which", "model") != "model":
            opts.append(f"--which {teacher['which']}")
        return (
            f"fewlabels pseudo-label {teacher.get('run', '<teacher run>')} {where} --out {self.path} {' '.join(opts)}"
        )

    def _require_complete(self) -> None:
        missing = self.missing_shards()
        if missing:
            shown = ", ".join(str(i) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
            raise ConfigError(
                f"{self.path} is missing {len(missing)} of {self.num_shards} shards ({shown}): finish them with "
                f"`{self.resume_command()}` (the same arguments as before; finished shards are kept)"
            )

    def load_shard(self, i: int, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Shard i as a dict of tensors (only `keys` when given)."""
        path = self.shard_path(i)
        if keys is None:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in keys}

    def iter_shards(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, Tensor]]:
        """Every shard in order, one at a time (checks first that all are there)."""
        self._require_complete()
        for i in range(self.num_shards):
            yield self.load_shard(i, keys)

    def dense(self, rows: Sequence[int] | Tensor | np.ndarray | None = None) -> Tensor:
        """(len(rows) x C) float32 soft labels for pool positions `rows` (all rows when None), in that order.

        Rebuilt from the top-k probabilities plus the remaining mass spread evenly over the other classes, so
        every row sums to 1; exact when the folder was written with full=True. All rows take N x C x 4 bytes.
        """
        self._require_complete()
        n, c = self.num_items, self.num_classes
        want = np.arange(n, dtype=np.int64) if rows is None else _as_rows(rows, n)
        out = torch.empty(len(want), c, dtype=torch.float32)
        keys = ["probs"] if self.full else ["topk_probs", "topk_classes", "rest_mass"]
        shard_of = want // self.shard_size
        for i in np.unique(shard_of):
            where = np.flatnonzero(shard_of == i)
            start, _ = self.shard_range(int(i))
            dense = _dense_rows(self.load_shard(int(i), keys), c)
            out[torch.from_numpy(where)] = dense[torch.from_numpy(want[where] - start)]
        return out

    def hard(self, rows: Sequence[int] | Tensor | np.ndarray | None = None) -> Tensor:
        """int64 argmax classes for `rows` (all rows when None)."""
        self._require_complete()
        n = self.num_items
        want = np.arange(n, dtype=np.int64) if rows is None else _as_rows(rows, n)
        out = torch.empty(len(want), dtype=torch.int64)
        shard_of = want // self.shard_size
        for i in np.unique(shard_of):
            where = np.flatnonzero(shard_of == i)
            start, _ = self.shard_range(int(i))
            top = self.load_shard(int(i), ["topk_classes"])["topk_classes"][:, 0].long()
            out[torch.from_numpy(where)] = top[torch.from_numpy(want[where] - start)]
        return out


# =============================================================================================== selection


@dataclass
class Selection:
    """Pseudo-labeled items chosen by `select`: pool positions (repeated for copies) and their targets."""

    index: Tensor
    """int64 pool positions, sorted; a duplicated item appears once per copy."""
    targets: Tensor
    """float32 (len(index) x C): the teacher's soft labels (rebuilt from top-k as `PseudoLabels.dense` does; exact
    when the labels were written with full=True), or the label-smoothed one-hot predicted class with hard=True."""
    class_counts: Tensor
    """int64 (C,): items per predicted class in the selection (copies included)."""
    kept_before_balance: Tensor
    """int64 (C,): items per predicted class that passed the threshold (and subset), before the cut and copies."""
    per_class: int
    """The per-class target N."""
    threshold: float
    classes: list[str] = field(default_factory=list)
    balance: bool = True
    hard: bool = False
    seed: int = 0
    source: str | None = None
    """The pseudo-label folder the selection came from."""

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors: the tensors) and its .json sidecar (the rest), each atomically."""
        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        tensors = {
            "index": self.index.to(torch.int64).contiguous(),
            "targets": self.targets.to(torch.float32).contiguous(),
            "class_counts": self.class_counts.to(torch.int64).contiguous(),
            "kept_before_balance": self.kept_before_balance.to(torch.int64).contiguous(),
        }
        meta = {
            "format": SELECTION_FORMAT,
            "format_version": 1,
            "items": len(self),
            "per_class": self.per_class,
            "threshold": self.threshold,
            "classes": self.classes,
            "balance": self.balance,
            "hard": self.hard,
            "seed": self.seed,
            "source": self.source,
            "class_counts": self.class_counts.tolist(),
            "kept_before_balance": self.kept_before_balance.tolist(),
        }
        # The sidecar first: the .safetensors, whose presence marks a finished selection, is written last.
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"format": SELECTION_FORMAT}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        """Read what `save` wrote."""
        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        sidecar = path.with_suffix(".json")
        if not path.is_file() or not sidecar.is_file():
            raise ConfigError(f"no saved selection at {path} (needs {path.name} and {sidecar.name})")
        meta = json.loads(sidecar.read_text())
        t = load_file(str(path))
        return cls(
            index=t["index"],
            targets=t["targets"],
            class_counts=t["class_counts"],
            kept_before_balance=t["kept_before_balance"],
            per_class=int(meta["per_class"]),
            threshold=float(meta["threshold"]),
            classes=list(meta.get("classes", [])),
            balance=bool(meta.get("balance", True)),
            hard=bool(meta.get("hard", False)),
            seed=int(meta.get("seed", 0)),
            source=meta.get("source"),
        )


def _top1_stream(labels: PseudoLabels) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(index, max probability, predicted class) per shard."""
    for shard in labels.iter_shards(["index", "topk_probs", "topk_classes"]):
        yield (
            shard["index"].numpy(),
            shard["topk_probs"][:, 0].numpy().astype(np.float32),
            shard["topk_classes"][:, 0].numpy().astype(np.int64),
        )


def select(
    labels: PseudoLabels | str | Path,
    *,
    threshold: float = 0.3,
    per_class: int | None = None,
    balance: bool = True,
    hard: bool = False,
    seed: int = 0,
    subset: Sequence[int] | Tensor | np.ndarray | None = None,
    label_smoothing: float = 0.1,
) -> Selection:
    """Noisy Student's filtering and class balancing (`filter_unlabel.py`), streamed over the shards.

    Items whose max probability is below `threshold` are dropped (and, with `subset`, items outside those pool
    positions, e.g. a run's unlabeled pool). Per predicted class the `per_class` most confident survive (ties:
    the lower position first); `per_class=None` takes the median count over the classes that kept any item.
    With `balance=True` a class with m < per_class items gets per_class / m copies of each by stochastic
    rounding: every item gets floor or ceil of that factor, the ceil ones drawn at random (seeded by `seed`), so
    the class totals exactly per_class. Memory holds at most C x per_class candidates plus one shard, and the
    selection itself (its targets are a dense len x C matrix).
    With `hard=True` the targets are the predicted classes, label-smoothed by `label_smoothing` (0.1, as Noisy
    Student's hard-label path does: 1 - 0.1 + 0.1 / C on the class, 0.1 / C elsewhere).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    labels = labels if isinstance(labels, PseudoLabels) else PseudoLabels(labels)
    if not (isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0):
        raise ConfigError(f"threshold must be a probability in [0, 1] (Noisy Student uses 0.3), got {threshold!r}")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise ConfigError(f"per_class must be a positive integer or None (the median class count), got {per_class!r}")
    n, c = labels.num_items, labels.num_classes
    allowed = None if subset is None else np.unique(_as_rows(subset, n, "subset"))

    def eligible() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for idx, conf, cls in _top1_stream(labels):
            keep = conf >= threshold
            if allowed is not None:
                lo, hi = np.searchsorted(allowed, [idx[0], idx[-1] + 1])
                keep &= np.isin(idx, allowed[lo:hi], assume_unique=True)
            yield idx[keep], conf[keep], cls[keep]

    counts = np.zeros(c, np.int64)
    counted = per_class is None
    if per_class is None:  # a first, cheap pass for the class counts
        for _, _, cls in eligible():
            counts += np.bincount(cls, minlength=c)
        present = counts[counts > 0]
        per_class = max(1, int(np.median(present))) if present.size else 1

    # Streaming per-class top-N: candidates of every class, merged with each shard and cut back to N per class.
    cand_idx, cand_conf, cand_cls = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    for idx, conf, cls in eligible():
        if not counted:
            counts += np.bincount(cls, minlength=c)
        all_idx = np.concatenate([cand_idx, idx])
        all_conf = np.concatenate([cand_conf, conf])
        all_cls = np.concatenate([cand_cls, cls])
        order = np.lexsort((all_idx, -all_conf, all_cls))  # by class, then confidence down, then position
        all_idx, all_conf, all_cls = all_idx[order], all_conf[order], all_cls[order]
        rank = np.arange(len(all_cls)) - np.searchsorted(all_cls, all_cls, side="left")
        keep = rank < per_class
        cand_idx, cand_conf, cand_cls = all_idx[keep], all_conf[keep], all_cls[keep]

    rng = np.random.default_rng(seed)
    chosen, chosen_cls, copies = [], [], []
    for k in range(c):
        members = cand_idx[cand_cls == k]
        m = len(members)
        if m == 0:
            continue
        reps = np.ones(m, np.int64)
        if balance and m < per_class:
            base, extra = divmod(per_class, m)
            reps[:] = base
            reps[rng.permutation(m)[:extra]] += 1
        chosen.append(members)
        chosen_cls.append(np.full(m, k, np.int64))
        copies.append(reps)
    unique_idx = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    unique_cls = np.concatenate(chosen_cls) if chosen else np.zeros(0, np.int64)
    reps_all = np.concatenate(copies) if copies else np.zeros(0, np.int64)
    order = np.argsort(unique_idx, kind="stable")
    unique_idx, unique_cls, reps_all = unique_idx[order], unique_cls[order], reps_all[order]
    index = np.repeat(unique_idx, reps_all)

    if hard:
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(unique_cls), c).float()
        rows = one_hot * (1.0 - label_smoothing) + label_smoothing / c
    else:
        rows = labels.dense(unique_idx) if len(unique_idx) else torch.zeros(0, c)
    targets = rows.repeat_interleave(torch.from_numpy(reps_all), dim=0)
    class_counts = torch.from_numpy(np.bincount(np.repeat(unique_cls, reps_all), minlength=c).astype(np.int64))
    return Selection(
        index=torch.from_numpy(index.astype(np.int64)),
        targets=targets.float(),
        class_counts=class_counts.to(torch.int64),
        kept_before_balance=torch.from_numpy(counts),
        per_class=int(per_class),
        threshold=float(threshold),
        classes=labels.classes,
        balance=balance,
        hard=hard,
        seed=seed,
        source=str(labels.path),
    )


# ==================================================================================================== entry


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fewlabels.pipelines.pseudo_label TEACHER_RUN DATA --out DIR ...` (also under torchrun)."""
    p = argparse.ArgumentParser(prog="python -m fewlabels.pipelines.pseudo_label", description=pseudo_label.__doc__)
    p.add_argument("teacher", help="run folder of the teacher")
    p.add_argument("data", help="a .npy (memory-mapped), .npz, image folder, .csv with a path column, or dataset name")
    p.add_argument("--out", required=True, help="folder for manifest.json and the shards")
    p.add_argument("--which", default="model", choices=["model", "best"])
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--full", action="store_true", help="also store the full probability rows")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        labels = pseudo_label(
            a.teacher,
            a.data,
            a.out,
            which=a.which,
            shard_size=a.shard_size,
            batch_size=a.batch_size,
            top_k=a.top_k,
            full=a.full,
            temperature=a.temperature,
            device=a.device,
            progress=not a.no_progress,
            data_root=a.data_root,
        )
    except (ConfigError, DataError) as e:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank fails alike; say it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{labels.num_items} items in {labels.num_shards} shards under {labels.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
