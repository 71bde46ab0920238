"""Export a finished run's model to one self-contained file (ONNX, TorchScript or safetensors) and load it back.

Every format carries the same JSON metadata (class names, input shape and convention, normalisation, the model's
recipe, the source run), so a deployed file needs nothing from the run folder:

- onnx: the model with its normalisation inside the graph, input `input` (float32, batch axis dynamic), outputs
  `logits` and `probabilities`; the JSON is the metadata_props entry "fewlabels". Needs `pip install
  'fewlabels[export]'` (onnx and onnxscript to write, onnxruntime to load).
- torchscript: a traced module in eval mode returning logits; the JSON is the extra file "fewlabels.json".
- safetensors: the weights, the JSON in the header's metadata under "fewlabels"; `load_exported` rebuilds the model.

`load_exported` reads .onnx (through onnxruntime) and .safetensors files only: TorchScript and pickle-based files
can run code when loaded, so it never opens them.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fewlabels.engine.run import Run
from fewlabels.errors import ConfigError, DataError, did_you_mean
from fewlabels.io import atomic_write_bytes

__all__ = ["FORMATS", "FORMAT_VERSION", "ExportedModel", "export_metadata", "export_run", "load_exported"]

FORMAT_VERSION = 1
"""Version of the metadata layout; `load_exported` refuses files written with a newer one."""
FORMATS: dict[str, tuple[str, ...]] = {
    "onnx": (".onnx",),
    "torchscript": (".pt", ".ts", ".torchscript"),
    "safetensors": (".safetensors",),
}
"""Export format -> accepted file suffixes (the first is the default)."""
METADATA_KEY = "fewlabels"
"""Key of the JSON metadata in ONNX metadata_props and in the safetensors header."""
TORCHSCRIPT_EXTRA_FILE = "fewlabels.json"
"""Name of the JSON metadata among a TorchScript file's extra files."""
INSTALL_HINT = "pip install 'fewlabels[export]'"
_EXAMPLE_BATCH = 2  # not 1: torch.export would specialise a batch axis of size 1 instead of keeping it dynamic


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fewlabels")
    except PackageNotFoundError:
        return "unknown"


def _check_format(format: str) -> str:
    fmt = str(format).strip().lower()
    if fmt not in FORMATS:
        hint = did_you_mean(fmt, FORMATS, n=1)
        raise ConfigError(f"unknown export format {format!r}: {hint}choose one of {', '.join(FORMATS)}")
    return fmt


def _require(*modules: str, purpose: str) -> list[Any]:
    """Import optional packages, or raise a ConfigError that names the missing ones and the install command."""
    found, missing = [], []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(f"{purpose} needs the package(s) {', '.join(missing)}: {INSTALL_HINT}")
    return found


def _input_convention(shape: list[int]) -> dict[str, Any]:
    """How to feed the exported model, in words a deployment needs."""
    if len(shape) == 3:
        c, h, w = shape
        return {
            "name": "input",
            "shape": ["batch", c, h, w],
            "layout": "NCHW",
            "dtype": "float32",
            "range": [0.0, 1.0],
            "color": "grayscale" if c == 1 else "RGB",
            "note": (
                f"{'grayscale' if c == 1 else 'RGB'} images of {w}x{h} pixels as float32 in [0, 1] (uint8 pixels "
                "divided by 255); the model normalises them itself with mean/std"
            ),
        }
    return {
        "name": "input",
        "shape": ["batch", shape[0]],
        "layout": "ND",
        "dtype": "float32",
        "note": "raw feature vectors as in the training data; the model normalises them itself with mean/std",
    }


def export_metadata(run: str | Path | Run, which: str = "model", format: str = "safetensors") -> dict[str, Any]:
    """The JSON-serialisable description that every exported file carries (see the module docstring).

    Raises the run's clear ConfigError when the run has not finished (no model saved yet).
    """
    run = run if isinstance(run, Run) else Run(run)
    fmt = _check_format(format)
    info = run.model_info(which)  # checks `which` too
    shape = [int(s) for s in info["input_shape"]]
    summary = run.summary
    outputs = {"onnx": ["logits", "probabilities"], "torchscript": ["logits"], "safetensors": ["logits"]}[fmt]
    return {
        "format_version": FORMAT_VERSION,
        "fewlabels_version": _version(),
        "format": fmt,
        "source_run": str(run.path.resolve()),
        "which": which,
        "model": info["model"],
        "num_classes": int(info["num_classes"]),
        "classes": [str(c) for c in info["classes"]],
        "modality": info.get("modality") or ("image" if len(shape) == 3 else "vector"),
        "input_shape": shape,
        "input": _input_convention(shape),
        "mean": list(info["mean"]),
        "std": list(info["std"]),
        "normalization": "inside the model: (x - mean) / std per channel (images, on the [0, 1] scale) or feature",
        "outputs": outputs,
        "dropout": info.get("dropout", 0.0),
        "neck": info.get("neck", 0),
        "options": dict(info.get("options", {})),
        "training": {k: summary[k] for k in ("algorithm", "dataset", "num_labels", "steps") if k in summary},
    }


def _target(run: Run, fmt: str, out: str | os.PathLike[str] | None, which: str) -> Path:
    default_name = f"{which}{FORMATS[fmt][0]}"
    if out is None:
        return run.path / "export" / default_name
    path = Path(out).expanduser()
    # A folder: an existing one, or a name that ends with a separator or has no suffix (created here).
    if path.exists() and not path.is_dir() and not path.suffix:
        raise ConfigError(
            f"--out {str(path)!r} is an existing file without a suffix: give a folder, or a file ending in "
            f"{' or '.join(FORMATS[fmt])}"
        )
    if path.is_dir() or str(out).endswith(("/", os.sep)) or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        return path / default_name
    if path.suffix.lower() not in FORMATS[fmt]:
        raise ConfigError(
            f"the {fmt} file {str(path)!r} must end in {' or '.join(FORMATS[fmt])} (or give a folder for --out)"
        )
    return path


class _WithProbabilities(nn.Module):
    """The classifier with softmax probabilities as a second output, for ONNX runtimes without a softmax step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, logits.softmax(-1)


def _example(meta: dict[str, Any]) -> torch.Tensor:
    return torch.rand(_EXAMPLE_BATCH, *meta["input_shape"], generator=torch.Generator().manual_seed(0))


def _onnx_bytes(model: nn.Module, meta: dict[str, Any]) -> bytes:
    onnx, _ = _require("onnx", "onnxscript", purpose="ONNX export")
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise ConfigError(
            f"ONNX export needs torch >= 2.5 (its torch.export-based exporter); this is {torch.__version__}"
        )
    wrapped = _WithProbabilities(model).eval()
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.onnx.export(
            wrapped,
            (_example(meta),),
            None,
            input_names=["input"],
            output_names=["logits", "probabilities"],
            dynamic_shapes={"x": {0: batch}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(meta)})
    proto.doc_string = f"fewlabels {meta['model']} classifier over {meta['num_classes']} classes"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _torchscript_bytes(model: nn.Module, meta: dict[str, Any]) -> bytes:
    with warnings.catch_warnings():
        # torch.jit is deprecated upstream in favour of torch.export, and the tracer flags the model's input check
        # (`x.shape[1] != C`) as a constant: right, since the channel count is fixed.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model.eval(), _example(meta))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(meta)})
    return buffer.getvalue()


def _safetensors_bytes(model: nn.Module, meta: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return save(weights, metadata={METADATA_KEY: json.dumps(meta), "format": "pt"})


_WRITERS: dict[str, Callable[[nn.Module, dict[str, Any]], bytes]] = {
    "onnx": _onnx_bytes,
    "torchscript": _torchscript_bytes,
    "safetensors": _safetensors_bytes,
}


def export_run(
    run: str | Path | Run, format: str, out: str | os.PathLike[str] | None = None, which: str = "model"
) -> Path:
    """Write a finished run's model, preprocessing and class names to one file and return its path.

    `format` is "onnx", "torchscript" or "safetensors"; `which` is "model" (the final EMA model) or "best" (the
    best on validation). `out` is the file to write, or a folder for the default name; the default is
    RUN/export/<which>.onnx, .pt or .safetensors. The write is atomic: a reader never sees a partial file.
    """
    fmt = _check_format(format)
    run = run if isinstance(run, Run) else Run(run)
    meta = export_metadata(run, which, fmt)
    target = _target(run, fmt, out, which)
    data = _WRITERS[fmt](run.load_model(which), meta)
    atomic_write_bytes(target, data)
    return target


class ExportedModel:
    """A model exported by `export_run`, loaded for inference without its run folder (see `load_exported`)."""

    def __init__(self, path: Path, metadata: dict[str, Any], probabilities: Callable[[np.ndarray], np.ndarray]):
        self.path = path
        self.metadata = metadata
        self._probabilities = probabilities

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, model={self.metadata['model']!r}, classes={len(self.classes)})"

    @property
    def format(self) -> str:
        """'onnx' or 'safetensors'."""
        return str(self.metadata["format"])

    @property
    def classes(self) -> list[str]:
        """Class names, index k -> name."""
        return list(self.metadata["classes"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input: (C, H, W) for images or (D,) for vectors."""
        return tuple(int(s) for s in self.metadata["input_shape"])

    def predict_proba(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (N, num_classes) as float32.

        `x` holds N inputs in the training format: uint8 images (0..255) or float images in [0, 1], as
        (N, C, H, W), (N, H, W, C) or (N, H, W) for one channel; or float vectors (N, D).
        """
        from fewlabels.api import fit_inputs

        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        arr = np.asarray(x)
        n = arr.shape[0] if arr.ndim else 0
        parts = []
        for start in range(0, n, batch_size):
            chunk = fit_inputs(arr[start : start + batch_size], self.input_shape, "x")
            chunk = chunk.astype(np.float32) / 255.0 if chunk.dtype == np.uint8 else chunk.astype(np.float32)
            parts.append(np.asarray(self._probabilities(np.ascontiguousarray(chunk)), dtype=np.float32))
        if not parts:
            fit_inputs(arr, self.input_shape, "x")  # the shape check still applies to an empty batch
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return np.concatenate(parts)

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Predicted class indices (N,); `classes[i]` names them."""
        return self.predict_proba(x, batch_size).argmax(-1)


def _parse_metadata(text: str | None, path: Path) -> dict[str, Any]:
    if not text:
        raise DataError(f"{path} carries no fewlabels metadata: export it with `fewlabels export`")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} has unreadable fewlabels metadata ({e})") from e
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int):
        raise DataError(f"{path} has fewlabels metadata without a format_version")
    if version > FORMAT_VERSION:
        raise DataError(
            f"{path} was written with export format version {version} (fewlabels {meta.get('fewlabels_version')}); "
            f"this fewlabels reads up to version {FORMAT_VERSION}: upgrade fewlabels"
        )
    return meta


def _load_onnx(path: Path) -> ExportedModel:
    (ort,) = _require("onnxruntime", purpose="loading an ONNX export")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for a bad file
        raise DataError(f"cannot load {path} as an ONNX model ({type(e).__name__}: {e})") from e
    meta = _parse_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)

    def probabilities(x: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {"input": x})[0]

    return ExportedModel(path, meta, probabilities)


def _load_safetensors(path: Path) -> ExportedModel:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    from fewlabels.engine.run import build_model

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        weights = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise DataError(f"cannot read {path} as a safetensors file ({e})") from e
    meta = _parse_metadata(header.get(METADATA_KEY), path)
    model = build_model(meta)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise DataError(f"the weights in {path} do not fit the model its metadata describes: {e}") from e
    model.eval()

    @torch.no_grad()
    def probabilities(x: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(x)).softmax(-1).numpy()

    return ExportedModel(path, meta, probabilities)


def load_exported(path: str | os.PathLike[str]) -> ExportedModel:
    """Load a .onnx (run with onnxruntime) or .safetensors (model rebuilt in torch) file written by `export_run`.

    TorchScript (.pt) and other pickle-based files are refused: loading them can run arbitrary code. A TorchScript
    export is for deployments that load it themselves with `torch.jit.load`, from a source they trust.
    """
    p = Path(path).expanduser()
    suffix = p.suffix.lower()
    if suffix in FORMATS["torchscript"] or suffix in (".pth", ".pkl", ".pickle", ".ckpt", ".bin"):
        raise ConfigError(
            f"load_exported does not open {p.name}: TorchScript and pickle-based files can run code when loaded. "
            "Load an .onnx or .safetensors export instead (fewlabels export RUN --format onnx|safetensors)"
        )
    if suffix not in (".onnx", ".safetensors"):
        raise ConfigError(f"cannot tell the format of {p.name}: load_exported reads .onnx and .safetensors files")
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    return _load_onnx(p) if suffix == ".onnx" else _load_safetensors(p)
