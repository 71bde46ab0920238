"""`fewlabels export`: one self-contained file per format that reproduces the run's model, and `load_exported`."""

from __future__ import annotations

import json
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx  # the `export` extra, part of `dev`
import onnxruntime as ort
import pytest
import torch

import fewlabels
from fewlabels.cli import main
from fewlabels.engine.run import Run
from fewlabels.errors import ConfigError
from fewlabels.export import ExportedModel, export_run, load_exported

FAST = {
    "train.steps": 6,
    "train.batch_size": 8,
    "train.unlabeled_ratio": 2,
    "train.eval_every": 3,
    "train.progress": False,
    "train.device": "cpu",
}


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A CNN on 1x8x8 digits with dropout (eval mode matters) and a validation split (so a best model exists)."""
    out = tmp_path_factory.mktemp("image") / "run"
    fewlabels.train(
        **FAST,
        **{
            "data.dataset": "digits",
            "data.labels_per_class": 2,
            "data.val_per_class": 2,
            "algorithm.name": "supervised",
            "model.dropout": 0.3,
            "out": str(out),
        },
    )
    return out


@pytest.fixture(scope="module")
def vector_run(tmp_path_factory) -> Path:
    """An MLP on 5-dimensional vectors with three named classes, from a user .npz."""
    folder = tmp_path_factory.mktemp("vector")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = rng.normal(size=(90, 5)).astype(np.float32) + 4 * np.eye(3, 5, dtype=np.float32)[y]
    y[:40] = -1
    np.savez(folder / "blobs.npz", x=x, y=y, classes=np.array(["ant", "bee", "cat"]))
    fewlabels.train(
        **FAST, **{"data.dataset": str(folder / "blobs.npz"), "algorithm.name": "fixmatch", "out": str(folder / "run")}
    )
    return folder / "run"


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)


def vectors(n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, 5)) * 3).astype(np.float32)


def torch_probs(run: Path, x: np.ndarray, which: str = "model") -> np.ndarray:
    """Probabilities of the run's PyTorch model on float inputs (images on the [0, 1] scale)."""
    model = Run(run).load_model(which)
    with torch.no_grad():
        return model(torch.from_numpy(x)).softmax(-1).numpy()


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_onnx_export_matches_pytorch_on_another_batch_size_and_carries_metadata(kind, image_run, vector_run, capsys):
    run = image_run if kind == "image" else vector_run
    assert main(["export", str(run), "--format", "onnx"]) == 0
    path = run / "export" / "model.onnx"
    assert f"exported: {path}" in capsys.readouterr().out
    assert no_temp_files(path.parent)

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["fewlabels"])
    info = Run(run).model_info()
    assert meta["classes"] == Run(run).classes == (["ant", "bee", "cat"] if kind == "vector" else list("0123456789"))
    assert meta["input_shape"] == info["input_shape"] == ([1, 8, 8] if kind == "image" else [5])
    assert meta["modality"] == kind and meta["which"] == "model" and meta["format"] == "onnx"
    assert meta["mean"] == info["mean"] and meta["std"] == info["std"] and meta["model"] == info["model"]
    assert meta["source_run"] == str(run.resolve()) and meta["format_version"] == 1
    assert meta["fewlabels_version"] == fewlabels.__version__
    assert meta["input"]["dtype"] == "float32" and meta["input"]["layout"] == ("NCHW" if kind == "image" else "ND")
    # The batch axis is symbolic, every other axis fixed.
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == meta["input_shape"]

    # onnxruntime on its own, on batches of sizes other than the export's example batch of 2.
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "probabilities"]
    for n in (1, 5):
        x = (images(n).astype(np.float32) / 255) if kind == "image" else vectors(n)
        logits, probs = session.run(None, {"input": x})
        assert probs.shape == (n, len(meta["classes"]))
        np.testing.assert_allclose(probs, torch_probs(run, x), atol=1e-5)
        np.testing.assert_allclose(probs, torch.from_numpy(logits).softmax(-1).numpy(), atol=1e-6)

    # The loader converts uint8 images itself and agrees with the run's own predict_proba.
    loaded = load_exported(path)
    assert isinstance(loaded, ExportedModel) and loaded.classes == meta["classes"] and loaded.format == "onnx"
    x = images(7) if kind == "image" else vectors(7)
    np.testing.assert_allclose(loaded.predict_proba(x, batch_size=3), Run(run).predict_proba(x), atol=1e-5)
    assert loaded.predict(x).tolist() == Run(run).predict(x).tolist()


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_torchscript_export_is_an_eval_mode_module_with_its_metadata(kind, image_run, vector_run):
    run = image_run if kind == "image" else vector_run
    path = export_run(run, "torchscript")
    assert path == run / "export" / "model.pt" and no_temp_files(path.parent)
    extra = {"fewlabels.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        module = torch.jit.load(str(path), _extra_files=extra)  # a file this test just wrote
    meta = json.loads(extra["fewlabels.json"])
    assert meta["classes"] == Run(run).classes and meta["format"] == "torchscript"
    assert meta["input_shape"] == Run(run).model_info()["input_shape"]
    assert not module.training
    x = (images(5).astype(np.float32) / 255) if kind == "image" else vectors(5)
    with torch.no_grad():
        first = module(torch.from_numpy(x)).softmax(-1).numpy()
        again = module(torch.from_numpy(x)).softmax(-1).numpy()
    np.testing.assert_allclose(first, torch_probs(run, x), atol=1e-5)
    assert np.array_equal(first, again)  # dropout is off
    # load_exported never opens TorchScript: loading it can run code.
    with pytest.raises(ConfigError, match="can run code"):
        load_exported(path)


@pytest.mark.parametrize("kind", ["image", "vector"])
def test_safetensors_export_alone_rebuilds_the_model(kind, image_run, vector_run, tmp_path):
    from safetensors import safe_open

    # Export from a copy of the run, then delete the copy: the file must be enough on its own.
    source = tmp_path / "copy"
    shutil.copytree(image_run if kind == "image" else vector_run, source)
    which = "best" if kind == "image" else "model"
    x = images(6) if kind == "image" else vectors(6)
    expected = Run(source).predict_proba(x, which=which)
    classes = Run(source).classes
    path = export_run(source, "safetensors", out=tmp_path / "deploy" / "classifier.safetensors", which=which)
    shutil.rmtree(source)

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    assert all(isinstance(v, str) for v in header.values())
    meta = json.loads(header["fewlabels"])
    assert meta["which"] == which and meta["classes"] == classes

    loaded = load_exported(path)
    assert loaded.format == "safetensors" and loaded.classes == classes
    assert loaded.input_shape == ((1, 8, 8) if kind == "image" else (5,))
    np.testing.assert_allclose(loaded.predict_proba(x, batch_size=4), expected, atol=1e-6)
    if kind == "image":  # float [0, 1] and channel-last images give the same answer as uint8 NCHW
        np.testing.assert_allclose(loaded.predict_proba(x.astype(np.float32) / 255), expected, atol=1e-5)
        np.testing.assert_allclose(loaded.predict_proba(x.transpose(0, 2, 3, 1)), expected, atol=1e-6)


def test_export_to_a_folder_and_the_best_model(image_run, tmp_path, capsys):
    target = tmp_path / "out"
    target.mkdir()
    code = main(["export", str(image_run), "--format", "safetensors", "--which", "best", "--out", str(target)])
    assert code == 0, capsys.readouterr().err
    best = load_exported(target / "best.safetensors")  # the CLI's --which reaches the file: the best model
    assert best.metadata["which"] == "best"
    x = images(5)
    np.testing.assert_allclose(best.predict_proba(x), Run(image_run).predict_proba(x, which="best"), atol=1e-6)
    # A folder that does not exist yet: a trailing separator or a name without a suffix.
    code = main(["export", str(image_run), "--format", "safetensors", "--out", str(tmp_path / "deploy") + "/"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "deploy" / "model.safetensors").is_file()
    assert export_run(image_run, "safetensors", out=tmp_path / "bundle") == tmp_path / "bundle" / "model.safetensors"


def test_export_errors_are_one_clear_line(image_run, tmp_path, capsys):
    with pytest.raises(ConfigError, match="onnx, torchscript, safetensors"):
        export_run(image_run, "tflite")
    code = main(["export", str(image_run), "--format", "tflite"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("fewlabels: error: ") and err.count("\n") == 1
    assert "'tflite'" in err and "onnx, torchscript, safetensors" in err

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(image_run / "config.yaml", unfinished / "config.yaml")
    code = main(["export", str(unfinished), "--format", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and "has not finished" in err
    assert not (unfinished / "export").exists()

    shutil.copy(image_run / "summary.json", unfinished / "summary.json")  # finished, but no best model kept
    code = main(["export", str(unfinished), "--format", "onnx", "--which", "best"])
    assert code == 2 and "no validation set" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"must end in \.safetensors"):
        export_run(image_run, "safetensors", out=tmp_path / "weights.onnx")
    with pytest.raises(ConfigError, match="reads .onnx and .safetensors"):
        load_exported(tmp_path / "model.bin.gz")


def test_missing_onnx_packages_name_the_extra(image_run, monkeypatch, tmp_path):
    exported = export_run(image_run, "onnx", out=tmp_path / "ok.onnx")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
        with pytest.raises(ConfigError, match=r"onnxscript.*pip install 'fewlabels\[export\]'"):
            export_run(image_run, "onnx", out=tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "onnxruntime", None)
        with pytest.raises(ConfigError, match=r"onnxruntime.*pip install 'fewlabels\[export\]'"):
            load_exported(exported)
