"""The Python API: the same calls the CLI makes."""

from __future__ import annotations

import csv
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import numpy as np
import torch

from fewlabels.data.formats import fit_image, image_files_under, manifest_paths
from fewlabels.engine.evaluate import accuracy, binary_roc_auc, per_class_accuracy, predict_logits
from fewlabels.engine.run import Run
from fewlabels.errors import ConfigError, DataError

__all__ = [
    "Prediction",
    "evaluate",
    "fit_inputs",
    "iter_predictions",
    "load_inputs",
    "predict",
    "prediction_header",
    "write_predictions",
]

INPUTS_HINT = "give image files or folders, a .csv with a path column, or a .npz with x (or a .npy array)"


def evaluate(run: str | Path | Run, which: str = "model") -> dict[str, Any]:
    """Accuracy of a finished run's model on its dataset's test set (and validation split)."""
    from fewlabels.data import Split, load_data

    run = run if isinstance(run, Run) else Run(run)
    run.model_info(which)  # a wrong `which`, a classic or unfinished run: refused before the data are loaded
    cfg = run.config
    d = cfg.data
    from fewlabels.estimator import IN_MEMORY

    if d.dataset == IN_MEMORY:
        raise ConfigError(
            f"{run.path} was trained by SemiSupervisedClassifier on in-memory arrays, which the run folder does not "
            "hold: score it with clf.score(X, y), or predict with `fewlabels predict RUN data.npz`"
        )
    bundle = load_data(d)
    if list(bundle.classes) != list(run.classes):
        raise DataError(
            f"{run.path} was trained on the classes {run.classes}, but {d.dataset} now has {bundle.classes}: "
            "scores would compare against the wrong labels; restore the data or retrain"
        )
    model = run.load_model(which)
    result: dict[str, Any] = {"run": str(run.path), "model": which}
    if bundle.x_test is not None and bundle.y_test is not None:
        logits = predict_logits(model, bundle.x_test, cfg.train.eval_batch_size)
        result["test_accuracy"] = accuracy(logits, bundle.y_test)
        if bundle.num_classes == 2:
            result["test_auc"] = binary_roc_auc(logits, bundle.y_test)
        per_class = per_class_accuracy(logits, bundle.y_test, bundle.num_classes)
        result["per_class_test_accuracy"] = dict(zip(bundle.classes, per_class, strict=True))
    split = Split.load(run.path / "split.json")
    if bundle.x_val is not None and bundle.y_val is not None:
        result["val_accuracy"] = accuracy(predict_logits(model, bundle.x_val), bundle.y_val)
        return result
    try:
        split.check_fits(bundle)  # the validation rows are indices into the training data the run saw
    except DataError as e:
        warnings.warn(f"validation accuracy is not reported: {e}", stacklevel=2)
        return result
    if len(split.val):
        idx = torch.from_numpy(np.array(split.val))
        result["val_accuracy"] = accuracy(predict_logits(model, bundle.x_train[idx]), bundle.y_train[idx])
    return result


# ============================================================================================ prediction inputs


def fit_inputs(x: np.ndarray, input_shape: Sequence[int], what: str = "inputs") -> np.ndarray:
    """Check a batch against a model's input shape and return it as (N, *input_shape), uint8 or float32.

    Vectors: any numeric (N, D) array, returned as float32. Images: (N, C, H, W), (N, H, W, C), or (N, H, W) for
    one channel; uint8 pixels stay uint8, integers must lie in 0..255 (made uint8) and floats (booleans too) in
    [0, 1] are rounded to uint8 pixels, as training stores float images, the scale `predict_logits` expects.
    """
    shape = tuple(int(s) for s in input_shape)
    x = np.asarray(x)
    if x.dtype.kind == "b":
        x = x.astype(np.float32)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.dtype}; give a numeric array")
    if len(shape) == 1:
        if x.ndim != 2 or x.shape[1] != shape[0]:
            raise DataError(f"{what} has shape {x.shape}; the model takes vectors (N, {shape[0]})")
        x = np.ascontiguousarray(x, dtype=np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise DataError(
                f"{what} holds NaN or infinite values in {int(bad.sum())} row(s), the first at row "
                f"{int(np.flatnonzero(bad)[0])}; impute or drop those rows (training refused them too)"
            )
        return x
    c, h, w = shape
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1:] != shape and x.shape[1:] == (h, w, c):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1:] != shape:
        raise DataError(
            f"{what} has shape {x.shape}; the model takes images (N, {c}, {h}, {w}) (or (N, {h}, {w}, {c})"
            + (f", (N, {h}, {w})" if c == 1 else "")
            + "): resize them first, or give image files, which are resized for you"
        )
    if x.dtype == np.uint8 or x.size == 0:
        return np.ascontiguousarray(x)
    lo, hi = float(x.min()), float(x.max())
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or lo < 0.0 or hi > 1.0:
            raise DataError(
                f"{what} holds float images with values in [{lo:g}, {hi:g}]; float images must lie in [0, 1]: "
                "divide by 255, or give uint8 pixels"
            )
        # Rounded to 8-bit pixels, as training stored float images, so a model sees what it was trained on.
        return np.ascontiguousarray(np.round(x * 255.0).astype(np.uint8))
    if lo < 0 or hi > 255:
        raise DataError(f"{what} holds integer images with values in [{lo:g}, {hi:g}]; pixels must be 0..255")
    return np.ascontiguousarray(x, dtype=np.uint8)


@dataclass
class _Segment:
    """A run of inputs read the same way: rows of an array, or image files decoded a batch at a time."""

    names: list[str]
    array: np.ndarray | None = None
    files: list[Path] | None = None
    origin: str = ""


def _array_file(path: Path) -> np.ndarray:
    """The `x` array of an .npz (loaded) or a .npy array (memory-mapped, read a batch at a time)."""
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"{path} has no array 'x' (found {z.files}); save inputs with np.savez(path, x=x)")
            return z["x"]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read {path} as a numeric array ({type(e).__name__}: {e})") from e


def _collect_inputs(inputs: Sequence[str | os.PathLike[str]], input_shape: tuple[int, ...]) -> list[_Segment]:
    """List every input up front (files are checked to exist but not decoded); consecutive image files merge."""
    segments: list[_Segment] = []
    for item in inputs:
        p = Path(item).expanduser()
        suffix = p.suffix.lower()
        if p.is_file() and suffix in (".npz", ".npy"):
            x = _array_file(p)
            if x.ndim == 0:
                raise DataError(f"{p} holds a scalar; give an array of inputs, shape (N, ...)")
            if len(x):
                fit_inputs(np.asarray(x[:1]), input_shape, str(p))  # a wrong shape or dtype fails before predicting
            segments.append(_Segment([f"{p.name}[{i}]" for i in range(len(x))], array=x, origin=str(p)))
            continue
        if p.is_dir():
            files = image_files_under(p)
        elif p.is_file() and suffix == ".csv":
            files = manifest_paths(p)
        elif p.is_file():
            files = [p]
        else:
            raise DataError(f"input {str(item)!r} does not exist: {INPUTS_HINT}")
        if len(input_shape) != 3:
            raise DataError(f"{p}: this model takes vectors, not images: give a .npz with an array x of shape (N, D)")
        if segments and segments[-1].files is not None:
            segments[-1].files += files
            segments[-1].names += [str(f) for f in files]
        else:
            segments.append(_Segment([str(f) for f in files], files=list(files), origin=str(p)))
    if not any(s.names for s in segments):
        raise DataError(f"no inputs found: {INPUTS_HINT}")
    return segments


def _read_images(files: list[Path], shape: tuple[int, ...]) -> np.ndarray:
    """Decode and fit one batch of image files; an unreadable file is an error that names it."""
    from fewlabels.data.formats import ImageReader

    reader = ImageReader(strict=True, image_size=None)
    out = np.empty((len(files), *shape), dtype=np.uint8)
    for row, path in enumerate(files):
        try:
            arr = reader.read(path)
        except DataError as e:
            cause = e.__cause__
            why = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
            raise DataError(f"cannot read image {path} ({why}); fix or remove the file, or leave it out") from e
        out[row] = fit_image(arr, shape)  # type: ignore[arg-type]
    return out


def _batches(
    segments: list[_Segment], shape: tuple[int, ...], batch_size: int
) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(names, inputs) a batch at a time: image files are decoded only when their batch comes up."""
    for seg in segments:
        for start in range(0, len(seg.names), batch_size):
            stop = min(start + batch_size, len(seg.names))
            if seg.files is not None:
                x = _read_images(seg.files[start:stop], shape)
            else:
                x = fit_inputs(np.asarray(seg.array[start:stop]), shape, seg.origin)  # type: ignore[index]
            yield seg.names[start:stop], torch.from_numpy(x)


def load_inputs(
    inputs: Sequence[str | os.PathLike[str]], input_shape: tuple[int, ...]
) -> tuple[list[str], torch.Tensor]:
    """Read prediction inputs all at once: image files or folders, a .csv with a `path` column, or a .npz with `x`.

    Returns the input names and one tensor (N, *input_shape): uint8 images, or float32 when the inputs mix
    uint8 and float images or are vectors. `predict` streams instead of calling this.
    """
    shape = tuple(int(s) for s in input_shape)
    names: list[str] = []
    parts: list[torch.Tensor] = []
    for batch_names, x in _batches(_collect_inputs(list(inputs), shape), shape, batch_size=1 << 30):
        names += batch_names
        parts.append(x)
    if len({p.dtype for p in parts}) > 1:
        from fewlabels.augment import to_float

        parts = [to_float(p) for p in parts]
    return names, torch.cat(parts) if len(parts) > 1 else parts[0]


# ================================================================================================ prediction


class Prediction(NamedTuple):
    """One input's most probable classes, most probable first."""

    input: str
    """The input's name: the image file's path, or `file.npz[i]` for row i of an array."""
    classes: tuple[str, ...]
    """The top-k class names."""
    confidences: tuple[float, ...]
    """Their probabilities, in descending order."""

    @property
    def label(self) -> str:
        """The predicted class name."""
        return self.classes[0]

    @property
    def confidence(self) -> float:
        """The predicted class's probability."""
        return self.confidences[0]


def _check_top_k(top_k: int, num_classes: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
        raise ConfigError(f"top_k (classes reported per input) must be a whole number >= 1, got {top_k!r}")
    return min(int(top_k), num_classes)


def iter_predictions(
    run: str | Path | Run,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    which: str = "model",
    top_k: int = 1,
    batch_size: int = 256,
    progress: bool = False,
) -> Iterator[Prediction]:
    """`predict` as a stream: reads, predicts and yields one batch of inputs at a time.

    The inputs are listed and checked before this returns, so a missing file or a wrong shape fails at once; an
    unreadable image fails when its batch is read, with an error that names the file.
    """
    run = run if isinstance(run, Run) else Run(run)
    if which not in ("model", "best"):
        raise ConfigError(f"which must be 'model' (final EMA model) or 'best' (best on validation), got {which!r}")
    info = run.model_info(which)
    classes = [str(c) for c in info["classes"]]
    k = _check_top_k(top_k, len(classes))
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    shape = tuple(int(s) for s in info["input_shape"])
    segments = _collect_inputs(items, shape)
    return _stream(run.load_model(which), segments, shape, classes, k, batch_size, progress)


def _stream(
    model: torch.nn.Module,
    segments: list[_Segment],
    shape: tuple[int, ...],
    classes: list[str],
    k: int,
    batch_size: int,
    progress: bool,
) -> Iterator[Prediction]:
    from tqdm.auto import tqdm

    total = sum(len(s.names) for s in segments)
    with tqdm(total=total, disable=not progress, unit="input", desc="predict", dynamic_ncols=True) as bar:
        for names, x in _batches(segments, shape, batch_size):
            probs = predict_logits(model, x, batch_size=batch_size).softmax(-1)
            conf, idx = probs.topk(k, dim=-1)
            for name, row_idx, row_conf in zip(names, idx.tolist(), conf.tolist(), strict=True):
                yield Prediction(name, tuple(classes[i] for i in row_idx), tuple(row_conf))
            bar.update(len(names))


def predict(
    run: str | Path | Run,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    which: str = "model",
    top_k: int = 1,
    batch_size: int = 256,
    progress: bool = False,
) -> list[Prediction]:
    """The `top_k` most probable classes of each input, with their probabilities, as `fewlabels predict` reports.

    `inputs` are image files or folders (searched recursively, sorted by path), CSV manifests with a `path`
    column (relative paths resolve against the CSV's folder), `.npz` files with an array `x`, or `.npy` arrays,
    in the model's training format: uint8 or [0, 1] float images, or float vectors. Images are converted to the
    model's channel count and resized (bicubic) to its input size. `which` is "model" (the final EMA model) or
    "best"; `top_k` (>= 1) is capped at the number of classes; inputs are read and predicted `batch_size` at a
    time, with a progress bar when `progress`. The probabilities are those of `Run.predict_proba`.
    """
    return list(iter_predictions(run, inputs, which, top_k, batch_size, progress))


def prediction_header(top_k: int) -> list[str]:
    """CSV columns for `top_k` classes: input, class, confidence, then class_2, confidence_2, ... up to k."""
    columns = ["input", "class", "confidence"]
    for i in range(2, top_k + 1):
        columns += [f"class_{i}", f"confidence_{i}"]
    return columns


def write_predictions(predictions: Iterable[Prediction], file: TextIO) -> int:
    """Write predictions as CSV (`prediction_header` columns, confidences to 6 decimals); return the row count.

    Rows are written as they come, so a stream from `iter_predictions` never needs to be held in memory.
    """
    writer = csv.writer(file)
    count = 0
    for p in predictions:
        if count == 0:
            writer.writerow(prediction_header(len(p.classes)))
        row = [p.input]
        for cls, conf in zip(p.classes, p.confidences, strict=True):
            row += [cls, f"{conf:.6f}"]
        writer.writerow(row)
        count += 1
    return count
