"""User data: an image folder, a CSV manifest or an .npz archive, each loaded whole into memory.

All three give a DataBundle with `labels_are_given=True`: rows labeled -1 are the unlabeled pool and the
others are the labeled candidates. Images are decoded into one uint8 tensor, so a dataset must fit in RAM
(N x C x H x W bytes: 100,000 RGB images at 64x64 take 1.2 GB).
"""

from __future__ import annotations

import csv
import os
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np
import torch
from PIL import Image, ImageOps

from fewlabels.data.bundle import DataBundle
from fewlabels.errors import ConfigError, DataError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_WIDE_GRAY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_SPLITS = ("train", "val", "test")
UNLABELED_MARKERS = frozenset({"-1", "unlabeled", "unlabelled", "unknown", "nan", "none", "null", "?", "na", "n/a"})
"""Labels that often mean "no label"; kept as classes (with a warning), since here unlabeled means an empty label."""


def sort_class_names(names: Iterable[str]) -> list[str]:
    """Sort class names; numerically when every name is an integer, so '10' comes after '9'."""
    unique = set(names)
    try:
        return sorted(unique, key=lambda s: (int(s), s))  # '1' and '01' in a fixed order, whatever the hash seed
    except ValueError:
        return sorted(unique)


# ----------------------------------------------------------------------------------------- image decoding


@dataclass
class ImageReader:
    """Decodes images one by one, remembering the unreadable ones instead of failing on the first."""

    strict: bool
    image_size: int | None
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    """Listed files (manifest rows) that do not exist, reported apart from the unreadable ones."""

    def read(self, path: Path) -> np.ndarray | None:
        """HxW (grayscale) or HxWx3 uint8 array, or None when the file cannot be decoded (and not strict)."""
        try:
            with Image.open(path) as im:
                # Phones store rotation in EXIF; without this, portrait photos arrive sideways.
                im = ImageOps.exif_transpose(im)
                im.load()
                arr = self._to_array(im)
        except MemoryError:
            raise  # out of memory is not a corrupt file
        # PIL's decoders raise many unrelated types (OSError, SyntaxError, ValueError, struct.error, ...).
        except Exception as e:
            if self.strict:
                raise DataError(
                    f"cannot read image {path} ({type(e).__name__}: {e}); fix or remove the file, "
                    "or run without --strict to skip unreadable files"
                ) from e
            self.skipped.append(str(path))
            return None
        return arr

    def _to_array(self, im: Image.Image) -> np.ndarray:
        if im.mode in _WIDE_GRAY_MODES:
            # convert("L") clips 16-bit values at 255 instead of scaling them.
            wide = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(wide / 65535.0 * 255.0, 0, 255).round().astype(np.uint8), mode="L")
        elif im.mode == "F":
            # Floating-point images (TIFF, scientific data): [0, 1] data is scaled to 0..255, anything wider is
            # taken as 0..255 and clipped; convert("L") would turn [0, 1] data black.
            wide = np.nan_to_num(np.asarray(im, dtype=np.float64))
            scale = 255.0 if wide.size and wide.max() <= 1.0 else 1.0
            im = Image.fromarray(np.clip(wide * scale, 0, 255).round().astype(np.uint8), mode="L")
        elif im.mode in _GRAY_MODES:
            im = im.convert("L")
        else:
            im = im.convert("RGB")
        if self.image_size is not None and im.size != (self.image_size, self.image_size):
            im = im.resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        return np.asarray(im, dtype=np.uint8).copy()

    def warn_skipped(self) -> None:
        """One warning summarising the skipped files: the unreadable ones and the missing ones."""

        def listing(files: list[str]) -> str:
            return ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")

        parts = []
        if self.skipped:
            parts.append(f"{len(self.skipped)} unreadable image file(s): {listing(self.skipped)}; fix or remove them")
        if self.missing:
            missing = listing(self.missing)
            parts.append(f"{len(self.missing)} listed file(s) that do not exist: {missing}; fix the paths")
        if parts:
            warnings.warn(f"skipped {'; and '.join(parts)}; or use --strict to stop on the first one", stacklevel=3)

    @property
    def dropped(self) -> list[str]:
        """Every file left out: unreadable, then missing."""
        return self.skipped + self.missing


def _stack_images(groups: dict[str, list[np.ndarray]], where: str, image_size: int | None) -> dict[str, torch.Tensor]:
    """Stack per-split lists of HxW / HxWx3 arrays into uint8 NCHW tensors with one common shape and mode."""
    arrays = [a for g in groups.values() for a in g]
    if not arrays:
        raise DataError(f"no readable image in {where}")
    sizes = Counter((a.shape[1], a.shape[0]) for a in arrays)
    if len(sizes) > 1:
        common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(3))
        raise DataError(
            f"images in {where} have different sizes ({common}{', ...' if len(sizes) > 3 else ''}); "
            f"pass --image-size N (e.g. --image-size 32) to resize them all to N x N"
        )
    gray = all(a.ndim == 2 for a in arrays)
    out = {}
    for split, group in groups.items():
        if not group:
            continue
        if gray:
            x = np.stack(group)[:, None]
        else:
            x = np.stack([np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in group])
            x = x.transpose(0, 3, 1, 2)
        out[split] = torch.from_numpy(np.ascontiguousarray(x))
    return out


def files_under(folder: Path) -> list[Path]:
    """Files under `folder` at any depth, sorted by path, following symbolic links to folders (each real folder is
    read once, so a link loop ends); hidden files and folders are left out."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files if not f.startswith("."))
    return sorted(p for p in found if p.is_file())


def _image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under `folder` at any depth, sorted; plus the non-hidden files with other extensions."""
    images, others = [], []
    for p in files_under(folder):
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return images, others


# ------------------------------------------------------------------------------------------- image folder


def load_image_folder(path: str | Path, strict: bool = False, image_size: int | None = None) -> DataBundle:
    """Load `labeled/<class>/*`, `unlabeled/*` and optional `val/<class>/*`, `test/<class>/*` into memory.

    Classes are the sorted subfolder names of labeled/. Images become grayscale when every image is grayscale,
    RGB otherwise; they must share one size unless `image_size` is given. Unreadable images are skipped and
    counted in `skipped_files` (an error under `strict`).
    """
    root = Path(path)
    labeled_dir = root / "labeled"
    if not labeled_dir.is_dir():
        raise DataError(
            f"{root} has no labeled/ folder; an image-folder dataset is labeled/<class>/*, unlabeled/*, "
            "and optionally val/<class>/* and test/<class>/*"
        )
    classes = sort_class_names(p.name for p in labeled_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{labeled_dir} has no class folders: put labeled images in labeled/<class name>/")
    index = {c: i for i, c in enumerate(classes)}
    reader = ImageReader(strict=strict, image_size=image_size)
    ignored: list[Path] = []
    groups: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}

    def read_classed(split: str, folder: Path) -> None:
        groups[split], labels[split] = [], []
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            if not p.is_dir():
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    raise DataError(
                        f"{p} is not inside a class folder: move it to {folder.name}/<class>/"
                        + (" or to unlabeled/" if split == "train" else "")
                    )
                ignored.append(p)
                continue
            if p.name not in index:
                raise DataError(
                    f"class {p.name!r} in {folder} is not one of the labeled classes {classes}; "
                    f"add labeled/{p.name}/ with training examples, or rename or remove {p}"
                )
            files, others = _image_files(p)
            ignored.extend(others)
            for f in files:
                arr = reader.read(f)
                if arr is not None:
                    groups[split].append(arr)
                    labels[split].append(index[p.name])

    read_classed("train", labeled_dir)
    unlabeled_dir = root / "unlabeled"
    if unlabeled_dir.is_dir():
        files, others = _image_files(unlabeled_dir)
        ignored.extend(others)
        for f in files:
            arr = reader.read(f)
            if arr is not None:
                groups["train"].append(arr)
                labels["train"].append(-1)
    for split in ("val", "test"):
        if (root / split).is_dir():
            read_classed(split, root / split)

    reader.warn_skipped()
    if ignored:
        shown = ", ".join(str(p) for p in ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        warnings.warn(
            f"ignored {len(ignored)} file(s) that are not images ({shown}); supported extensions: "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}",
            stacklevel=2,
        )
    if not groups["train"]:
        raise DataError(f"no readable training image in {labeled_dir} or {unlabeled_dir}")
    x = _stack_images(groups, str(root), image_size)
    return _bundle(root.resolve().name or str(root), x, labels, classes, reader.skipped)


def _bundle(
    name: str,
    x: dict[str, torch.Tensor],
    labels: dict[str, list[int]],
    classes: list[str],
    skipped: list[str],
) -> DataBundle:
    def y(split: str) -> torch.Tensor | None:
        return torch.tensor(labels[split], dtype=torch.int64) if split in x else None

    return DataBundle(
        name=name,
        x_train=x["train"],
        y_train=y("train"),  # type: ignore[arg-type]
        classes=classes,
        modality="image",
        x_test=x.get("test"),
        y_test=y("test"),
        x_val=x.get("val"),
        y_val=y("val"),
        hflip=True,
        default_model="cnn",
        labels_are_given=True,
        skipped_files=list(skipped),
    )


# ------------------------------------------------------------------------------------------ CSV manifest


def load_csv_manifest(path: str | Path, strict: bool = False, image_size: int | None = None) -> DataBundle:
    """Load a CSV with header `path,label[,split]`: empty label = unlabeled, split is train/val/test.

    Paths are relative to the CSV's folder or absolute. Classes are the distinct labels of the train rows,
    sorted (numerically when all are integers). Missing or unreadable images are skipped (an error under
    strict).
    """
    csv_path = Path(path)
    base = csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fieldnames = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in fieldnames or "label" not in fieldnames:
                raise DataError(
                    f"{csv_path} must start with the header line `path,label` "
                    f"(optionally `path,label,split`); found {reader.fieldnames}"
                )
            reader.fieldnames = fieldnames
            rows = [(reader.line_num, r) for r in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {csv_path}: {e}") from e

    entries: list[tuple[int, Path, str, str]] = []
    for line, r in rows:
        if r.get("path") is None or not r["path"].strip():
            raise DataError(f"row {line} of {csv_path} has no path; every row needs `path,label`")
        split = (r.get("split") or "train").strip().lower() or "train"
        if split not in _SPLITS:
            raise DataError(f"row {line} of {csv_path} has split {split!r}; use train, val or test (or leave it empty)")
        label = (r.get("label") or "").strip()
        if split != "train" and not label:
            raise DataError(f"row {line} of {csv_path} is a {split} row without a label; {split} rows must be labeled")
        entries.append((line, manifest_file(r["path"].strip(), base), label, split))

    classes = sort_class_names(lab for _, _, lab, s in entries if s == "train" and lab)
    odd = [c for c in classes if c.lower() in UNLABELED_MARKERS]
    if odd:  # a class of its own made of what the user meant as unlabeled rows would train on a wrong label
        rows = sum(lab == odd[0] for _, _, lab, _ in entries)
        warnings.warn(
            f"{csv_path}: the label {odd[0]!r} ({rows} rows) is treated as a class; if those rows are unlabeled, "
            "leave their label empty",
            UserWarning,
            stacklevel=2,
        )
    if not classes:
        raise DataError(f"{csv_path} has no labeled training row; give at least one row with a label")
    index = {c: i for i, c in enumerate(classes)}
    for line, _, label, split in entries:
        if split != "train" and label not in index:
            raise DataError(
                f"label {label!r} in row {line} of {csv_path} is not one of the classes {classes}; "
                "add labeled training examples of it or fix the label"
            )

    seen: dict[Path, tuple[int, str]] = {}
    for line, file, _, split in entries:
        first = seen.setdefault(file.resolve(), (line, split))
        if first[1] != split:  # one file both trained on and scored would inflate the scores
            raise DataError(
                f"{file} is listed as {first[1]} (row {first[0]}) and as {split} (row {line}) in {csv_path}: "
                "keep each file in one split"
            )

    image_reader = ImageReader(strict=strict, image_size=image_size)
    groups: dict[str, list[np.ndarray]] = {s: [] for s in _SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in _SPLITS}
    for line, file, label, split in entries:
        if not file.is_file():
            if strict:
                raise DataError(
                    f"row {line} of {csv_path}: image {file} does not exist; fix the path, "
                    "or run without --strict to skip missing files"
                )
            image_reader.missing.append(str(file))
            continue
        arr = image_reader.read(file)
        if arr is not None:
            groups[split].append(arr)
            labels[split].append(index[label] if label else -1)
    image_reader.warn_skipped()
    if not groups["train"]:
        raise DataError(f"no readable training image listed in {csv_path}")
    x = _stack_images({s: g for s, g in groups.items() if g}, str(csv_path), image_size)
    return _bundle(csv_path.stem, x, labels, classes, image_reader.dropped)


# ------------------------------------------------------------------------------------------------- .npz


def load_npz(path: str | Path, image_size: int | None = None) -> DataBundle:
    """Load an .npz with `x`, `y` (-1 = unlabeled), optional `x_val`, `y_val`, `x_test`, `y_test`, `classes`.

    x of shape (N, D) is vector data; (N, H, W) grayscale images; (N, C, H, W) or (N, H, W, C) with C in
    {1, 3} images, as uint8 or floats in [0, 1]. Never unpickles: object arrays are refused.
    """
    npz_path = Path(path)
    try:
        # allow_pickle=False: a pickled array in a user file could run arbitrary code when loaded.
        loaded = np.load(npz_path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _npz_read_error(npz_path, e) from e
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(
            f"{npz_path} holds a single array, not an .npz archive; save x and y together with np.savez(path, x=x, y=y)"
        )
    try:
        with loaded as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _npz_read_error(npz_path, e) from e

    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(
                f"{npz_path} has no array {key!r} (found {sorted(arrays)}); save it with np.savez(path, x=..., y=...)"
            )
    for a, b in (("x_val", "y_val"), ("x_test", "y_test")):
        if (a in arrays) != (b in arrays):
            have, lack = (a, b) if a in arrays else (b, a)
            raise DataError(
                f"{npz_path} has {have} without {lack}: save both, e.g. np.savez(path, ..., {a}={a}, {b}={b})"
            )

    classes: list[str] | None = None
    if "classes" in arrays:
        names = arrays["classes"]
        if names.dtype.kind not in "US" or names.ndim != 1:
            raise DataError(f"'classes' in {npz_path} must be a 1-D string array, got {names.dtype} {names.shape}")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
        if len(set(classes)) != len(classes):
            raise DataError(f"'classes' in {npz_path} repeats a name: {classes}")

    ys = {k: _npz_labels(arrays[k], k, npz_path) for k in ("y", "y_val", "y_test") if k in arrays}
    if classes is None:
        top = max((int(v.max()) for v in ys.values() if v.size), default=-1)
        if top < 0:
            raise DataError(
                f"{npz_path} has no labeled example and no 'classes' array; label some rows of y "
                "(class indices 0..C-1) or add classes=np.array([...names...])"
            )
        classes = [str(i) for i in range(top + 1)]
    num_classes = len(classes)
    for key, v in ys.items():
        allowed_low = -1 if key == "y" else 0
        bad = v[(v < allowed_low) | (v >= num_classes)]
        if bad.size:
            rng = "-1 (unlabeled) or " if key == "y" else ""
            raise DataError(
                f"{key!r} in {npz_path} holds label {int(bad[0])}; labels must be {rng}class indices "
                f"0..{num_classes - 1}"
                + ("" if key == "y" else " (validation and test rows must be labeled)")
                + "; fix the labels or the 'classes' array"
            )

    xs = {}
    for key, ykey in (("x", "y"), ("x_val", "y_val"), ("x_test", "y_test")):
        if key not in arrays:
            continue
        xs[key] = _npz_inputs(arrays[key], key, npz_path)
        if len(xs[key]) != len(ys[ykey]):
            raise DataError(f"{npz_path}: {key} has {len(xs[key])} rows but {ykey} has {len(ys[ykey])}")
    modality = "vector" if xs["x"].ndim == 2 else "image"
    for key in ("x_val", "x_test"):
        if key in xs and xs[key].shape[1:] != xs["x"].shape[1:]:
            raise DataError(
                f"{npz_path}: {key} samples have shape {tuple(xs[key].shape[1:])} but x samples "
                f"{tuple(xs['x'].shape[1:])}"
            )
    if image_size is not None:
        if modality != "image":
            raise ConfigError(f"--image-size applies to images, but {npz_path} holds vectors")
        from fewlabels.data.sources import resize_images

        xs = {k: resize_images(v, image_size) for k, v in xs.items()}

    def t(key: str) -> torch.Tensor | None:
        return torch.from_numpy(ys[key]) if key in ys else None

    return DataBundle(
        name=npz_path.stem,
        x_train=xs["x"],
        y_train=t("y"),  # type: ignore[arg-type]
        classes=classes,
        modality=modality,
        x_test=xs.get("x_test"),
        y_test=t("y_test"),
        x_val=xs.get("x_val"),
        y_val=t("y_val"),
        hflip=True,
        default_model="mlp" if modality == "vector" else "cnn",
        labels_are_given=True,
    )


def _npz_read_error(path: Path, e: Exception) -> DataError:
    if isinstance(e, ValueError) and "pickle" in str(e):
        return DataError(
            f"{path} holds an object (pickled) array, which fewlabels never loads for safety; "
            "save plain numeric arrays, e.g. np.savez(path, x=x.astype(np.float32), "
            "y=y.astype(np.int64)), and class names as a string array"
        )
    return DataError(f"cannot read {path} as an .npz archive ({type(e).__name__}: {e}); save it with np.savez")


def _npz_labels(y: np.ndarray, key: str, where: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{key!r} in {where} must be a 1-D array of class indices, got shape {y.shape}")
    if y.dtype.kind in "iub":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        bad = y[~np.isfinite(y) | (y != np.round(y))] if y.size else y
        if bad.size:
            raise DataError(
                f"{key!r} in {where} holds label {bad[0]!r}, which is not an integer; labels must be class "
                "indices 0..C-1 or -1 for unlabeled (map names to indices and store class names in 'classes')"
            )
        return y.astype(np.int64)
    raise DataError(
        f"{key!r} in {where} has dtype {y.dtype}; labels must be integers (class indices 0..C-1, -1 = "
        "unlabeled); map names to indices and store the names as classes=np.array([...])"
    )


CONVERT_CHUNK_BYTES = 64 << 20
"""Float image arrays are converted to uint8 pixels in row chunks of about this many float64 bytes."""


def _npz_inputs(x: np.ndarray, key: str, where: Path | str) -> torch.Tensor:
    if x.dtype.kind not in "iufb":
        raise DataError(f"{key!r} in {where} has dtype {x.dtype}; inputs must be numeric arrays")
    if x.ndim == 2:
        v = x.astype(np.float32)
        if not np.isfinite(v).all():
            raise DataError(f"{key!r} in {where} holds NaN or infinite values; impute or drop those rows")
        return torch.from_numpy(v)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[1] not in (1, 3):
            if x.shape[3] not in (1, 3):
                raise DataError(
                    f"{key!r} in {where} has shape {x.shape}; images must be (N, H, W), (N, C, H, W) or "
                    "(N, H, W, C) with C = 1 (grayscale) or 3 (RGB)"
                )
            x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(
            f"{key!r} in {where} has shape {x.shape}; give (N, D) vectors or (N, H, W) / (N, C, H, W) / "
            "(N, H, W, C) images"
        )
    if x.dtype.kind == "b":  # booleans are [0, 1] images (0 or 255), as `fewlabels predict` reads them too
        x = x.astype(np.uint8) * np.uint8(255)
    if x.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(x))
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if x.dtype.kind == "f":
        if not np.isfinite([lo, hi]).all() or lo < 0.0 or hi > 1.0:  # min/max are NaN where any value is
            raise DataError(
                f"{key!r} in {where} is a float image array with values in [{lo:g}, {hi:g}]; "
                "float images must lie in [0, 1]: divide by 255, or save uint8 pixels"
            )
        # In row chunks: one float copy of a whole float64 array would be 8 bytes a pixel (1.2 GB for CIFAR-10).
        out = np.empty(x.shape, np.uint8)
        step = max(1, CONVERT_CHUNK_BYTES // max(1, x[0].size * 8))
        for i in range(0, len(x), step):
            out[i : i + step] = np.round(x[i : i + step] * 255.0)
        return torch.from_numpy(out)
    if lo < 0 or hi > 255:
        raise DataError(
            f"{key!r} in {where} is an integer image array with values in [{lo:g}, {hi:g}]; pixels must be 0..255"
        )
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8)))


def fit_image(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An HxW or HxWx3 uint8 image as a model's CxHxW: mode conversion (L or RGB), then a bicubic resize where the
    size differs. `fewlabels predict` and `fewlabels pseudo-label` prepare every image file this way."""
    c, h, w = shape
    im = Image.fromarray(arr).convert("L" if c == 1 else "RGB")
    if im.size != (w, h):
        im = im.resize((w, h), Image.Resampling.BICUBIC)
    out = np.asarray(im, dtype=np.uint8)
    return out[None] if c == 1 else out.transpose(2, 0, 1)


def image_files_under(folder: Path) -> list[Path]:
    """Image files under `folder` at any depth, sorted by path (see `files_under`)."""
    return _image_files(folder)[0]


def manifest_file(value: str, base: Path) -> Path:
    """A manifest's `path` value as a file: `~` expanded, relative paths against the CSV's folder `base`, and
    backslashes read as separators (a manifest written on Windows) when the path as written does not exist."""

    def resolve(text: str) -> Path:
        p = Path(text).expanduser()
        return p if p.is_absolute() else base / p

    p = resolve(value)
    if "\\" in value and os.sep != "\\" and not p.exists():
        p = resolve(PureWindowsPath(value).as_posix())
    return p


def manifest_paths(path: Path, check_exists: bool = True) -> list[Path]:
    """The `path` column of a CSV, in row order; relative paths resolve against the CSV's folder. With
    `check_exists`, a listed file that does not exist is an error naming its line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [(c or "").strip().lower() for c in (reader.fieldnames or [])]
            if "path" not in fields:
                raise DataError(f"{path} needs a header line with a `path` column; found {reader.fieldnames}")
            reader.fieldnames = fields
            files = []
            for row in reader:
                value = (row.get("path") or "").strip()
                if not value:
                    raise DataError(f"line {reader.line_num} of {path} has no path")
                p = manifest_file(value, path.parent)
                if check_exists and not p.is_file():
                    raise DataError(f"line {reader.line_num} of {path}: image {p} does not exist")
                files.append(p)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    return files
