"""Item sources: the pool `pseudo_label` reads in slices (tensor, memory-mapped .npy, .npz, image folder or CSV
manifest, built-in dataset), and `open_source`, which picks one for what the user named."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewlabels.data.formats import fit_image, image_files_under, manifest_paths
from fewlabels.errors import ConfigError, DataError


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
