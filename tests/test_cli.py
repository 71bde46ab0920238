"""The `fewlabels` command: listings, train/evaluate/predict round trip, and one-line errors for bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fewlabels
from fewlabels.cli import main
from fewlabels.engine.run import Run

FAST = ["--steps", "6", "--batch-size", "8", "--unlabeled-ratio", "2", "--eval-every", "3", "--no-progress"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def blobs_npz(path, n=120, unlabeled=60, seed=0, bad_label=None):
    """Three separable Gaussian blobs in 5 dimensions; the first `unlabeled` rows have y = -1."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 5)).astype(np.float32) + 4 * np.eye(3, 5, dtype=np.float32)[y_true]
    y = y_true.copy()
    y[:unlabeled] = -1
    if bad_label is not None:
        y[-1] = bad_label
    y_test = rng.integers(0, 3, 30)
    x_test = rng.normal(size=(30, 5)).astype(np.float32) + 4 * np.eye(3, 5, dtype=np.float32)[y_test]
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test, classes=np.array(["a", "b", "c"]))
    return path


def test_listings(capsys):
    code, out, _ = run_cli(capsys, "algorithms")
    assert code == 0
    for name in ("supervised", "pseudo_label", "fixmatch", "flexmatch", "freematch", "softmatch", "pi_model"):
        assert name in out
    for name in ("mean_teacher", "temporal_ensembling", "vat", "mixmatch", "remixmatch", "uda"):
        assert name in out
    assert "threshold=0.95" in out
    classic = out.split("Classic baselines")[1]
    for name in ("label_spreading", "label_propagation", "self_training"):
        assert name in classic
    assert "n_neighbors=7" in classic
    assert "wrn28_2" in run_cli(capsys, "models")[1]
    datasets = run_cli(capsys, "datasets")[1]
    assert all(n in datasets for n in ("digits", "mnist1d", "fashion-mnist", "cifar10", "svhn", "stl10", "wine"))


def test_train_evaluate_predict_on_user_npz(tmp_path, capsys):
    data = blobs_npz(tmp_path / "blobs.npz")
    out_dir = tmp_path / "run"
    code, out, err = run_cli(
        capsys, "train", "--dataset", str(data), "--algorithm", "fixmatch", "--out", str(out_dir), *FAST
    )
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["steps"] == 6
    code, out, _ = run_cli(capsys, "evaluate", str(out_dir))
    result = json.loads(out)
    assert code == 0 and set(result["per_class_test_accuracy"]) == {"a", "b", "c"}
    assert result["test_accuracy"] == pytest.approx(Run(out_dir).summary["test_accuracy"])  # the same final model
    code, out, _ = run_cli(capsys, "predict", str(out_dir), str(data))
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["input", "class", "confidence"]
    probs = Run(out_dir).predict_proba(np.load(data)["x"])
    assert [r[1] for r in rows[1:]] == [["a", "b", "c"][k] for k in probs.argmax(1)]
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(probs.max(1).tolist(), abs=1e-5)


def test_file_mistakes_in_predict_evaluate_and_export_are_one_line_errors(tmp_path, capsys):
    data = blobs_npz(tmp_path / "blobs.npz")
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--dataset", str(data), "--out", str(run), *FAST)[0] == 0
    # A NaN feature: refused, as in training, instead of a prediction with NaN confidence.
    with np.load(data) as z:
        x = z["x"][:4].copy()
    x[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    code, _, err = run_cli(capsys, "predict", str(run), str(tmp_path / "nan.npz"))
    assert code == 2 and "NaN or infinite" in err and "row 2" in err
    # A truncated .npz (a zip cut short) is named, not a BadZipFile traceback.
    (tmp_path / "cut.npz").write_bytes(data.read_bytes()[:300])
    code, _, err = run_cli(capsys, "predict", str(run), str(tmp_path / "cut.npz"))
    assert code == 2 and "cut.npz" in err and err.count("\n") == 1
    # An existing folder as the predictions file: refused before any prediction.
    (tmp_path / "folder").mkdir()
    code, _, err = run_cli(capsys, "predict", str(run), str(data), "-o", str(tmp_path / "folder"))
    assert code == 2 and "is a folder" in err and list((tmp_path / "folder").iterdir()) == []
    # export: an existing file without a suffix as --out, and a misspelt format.
    (tmp_path / "plain").write_text("keep me")
    code, _, err = run_cli(capsys, "export", str(run), "--format", "safetensors", "--out", str(tmp_path / "plain"))
    assert code == 2 and "existing file without a suffix" in err and (tmp_path / "plain").read_text() == "keep me"
    code, _, err = run_cli(capsys, "export", str(run), "--format", "safetensor")
    assert code == 2 and "did you mean 'safetensors'" in err
    # evaluate: a wrong `which` from Python is named before the data are read.
    with pytest.raises(fewlabels.errors.ConfigError, match="'model'.*'best'.*got 'bset'"):
        fewlabels.evaluate(run, which="bset")
    # A file-system error in any command is one line, not a traceback.
    code, _, err = run_cli(capsys, "train", "--dataset", str(data), "--out", str(tmp_path / "plain" / "x"), *FAST)
    assert code in (1, 2) and err.startswith("fewlabels: error: ") and err.count("\n") == 1


def test_interrupted_commands_say_how_to_carry_on():
    from fewlabels.cli import INTERRUPTED, build_parser

    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert set(INTERRUPTED) <= set(subcommands) and "train" in INTERRUPTED
    for command, advice in INTERRUPTED.items():  # --resume is advised exactly where the command has the flag
        flags = {flag for action in subcommands[command]._actions for flag in action.option_strings}
        assert ("--resume" in advice) == ("--resume" in flags), command


def test_relative_data_path_is_saved_absolute_so_evaluate_works_from_elsewhere(tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    blobs_npz(tmp_path / "data" / "blobs.npz")
    monkeypatch.chdir(tmp_path)
    args = ["train", "--dataset", "data/blobs.npz", "--algorithm", "supervised", "--out", "run", *FAST]
    assert run_cli(capsys, *args)[0] == 0
    assert Run(tmp_path / "run").config.data.dataset == str(tmp_path / "data" / "blobs.npz")
    assert run_cli(capsys, *args, "--resume")[0] == 0  # the same relative path from the same folder resumes
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = run_cli(capsys, "evaluate", str(tmp_path / "run"))
    assert code == 0, err
    assert json.loads(out)["test_accuracy"] == pytest.approx(Run(tmp_path / "run").summary["test_accuracy"])


def test_pipeline_stage_with_a_relative_data_path_is_found_finished(tmp_path, monkeypatch):
    from fewlabels.config import resolve_config
    from fewlabels.engine.stage import resumable, run_stage

    blobs_npz(tmp_path / "blobs.npz")
    monkeypatch.chdir(tmp_path)
    cfg = resolve_config(
        **{"data.dataset": "blobs.npz", "algorithm.name": "supervised", "train.steps": 4, "train.progress": False}
    )
    first = run_stage(cfg, tmp_path / "stage")
    again = run_stage(cfg, tmp_path / "stage")  # finished, same settings: returned, not refused or retrained
    assert again.summary == first.summary
    (tmp_path / "stage" / "checkpoint.json").write_text("{cut")
    assert not resumable(tmp_path / "stage")  # a broken checkpoint is not resumable (and raises nothing here)


def test_resume_and_evaluate_refuse_changed_data(tmp_path, capsys):
    data = blobs_npz(tmp_path / "blobs.npz")
    out_dir = tmp_path / "run"
    args = ["train", "--dataset", str(data), "--algorithm", "fixmatch", "--out", str(out_dir), *FAST]
    assert run_cli(capsys, *args)[0] == 0
    split = json.loads((out_dir / "split.json").read_text())
    assert split["data"]["rows"] == 120 and split["data"]["classes"] == ["a", "b", "c"]
    assert run_cli(capsys, *args, "--resume")[0] == 0  # the same data: resuming a finished run is fine
    blobs_npz(data, seed=1)  # same shape and classes, other rows: the saved indices would mean other examples
    code, _, err = run_cli(capsys, *args, "--resume")
    assert code != 0 and "not the data this run's split was drawn from" in err and "labels" in err
    x = np.load(data)
    np.savez(data, **{k: x[k] for k in x.files if k != "classes"}, classes=np.array(["a", "b", "z"]))
    code, _, err = run_cli(capsys, "evaluate", str(out_dir))
    assert code != 0 and "['a', 'b', 'c']" in err and "wrong labels" in err


def test_predict_images_writes_csv_file(tmp_path, capsys):
    out_dir = tmp_path / "run"
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        "digits",
        "--labels-per-class",
        "2",
        "--algorithm",
        "supervised",
        "--out",
        str(out_dir),
        *FAST,
    )
    assert code == 0, err
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "rgb.png")  # converted to the model's 1 channel
    target = tmp_path / "preds.csv"
    assert run_cli(capsys, "predict", str(out_dir), str(folder), "-o", str(target))[0] == 0
    rows = list(csv.DictReader(target.open()))
    assert [r["input"].rsplit("/", 1)[1] for r in rows] == ["0.png", "1.png", "2.png", "rgb.png"]
    # The same images converted by hand (grey levels 0, 40, 80; the red one through PIL's luma weights: 0.299 * 200
    # + 0.587 * 10 + 0.114 * 10 = 66.8 -> 67) and resized to 8x8 (a uniform image stays uniform) give the CSV's rows.
    x = np.stack([np.full((1, 8, 8), v, dtype=np.uint8) for v in (0, 40, 80, 67)])
    probs = Run(out_dir).predict_proba(x)
    classes = Run(out_dir).classes
    assert [r["class"] for r in rows] == [classes[i] for i in probs.argmax(1)]
    assert [float(r["confidence"]) for r in rows] == pytest.approx(probs.max(1).tolist(), abs=1e-5)


def test_yaml_defaults_and_flag_overrides(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data: {dataset: digits, labels_per_class: 3}\nalgorithm: {name: fixmatch, threshold: 0.7}\ntrain: {steps: 4}\n"
    )
    out_dir = tmp_path / "run"
    code, _, err = run_cli(
        capsys,
        "train",
        "--config",
        str(config),
        "--steps",
        "6",
        "--set",
        "algorithm.lambda_u=2",
        "--out",
        str(out_dir),
        "--batch-size",
        "8",
        "--unlabeled-ratio",
        "2",
        "--no-progress",
    )
    assert code == 0, err
    saved = (out_dir / "config.yaml").read_text()
    assert "threshold: 0.7" in saved and "lambda_u: 2" in saved and "steps: 6" in saved
    assert json.loads((out_dir / "summary.json").read_text())["num_labels"] == 30


def test_steps_or_budget_flag_wins_over_the_other_in_the_config(tmp_path):
    from fewlabels.cli import build_parser, train_overrides
    from fewlabels.config import resolve_config

    config = tmp_path / "c.yaml"
    config.write_text("train: {budget: 15m}\nalgorithm: {name: fixmatch, threshold: 1e-1}\n")
    parse = build_parser().parse_args
    cfg = resolve_config(config, **train_overrides(parse(["train", "--config", str(config), "--steps", "50"])))
    assert cfg.train.steps == 50 and cfg.train.budget is None
    assert cfg.algorithm.options["threshold"] == 0.1  # YAML 1.2 floats: 1e-1 is a number
    config.write_text("train: {steps: 300}\n")
    cfg = resolve_config(config, **train_overrides(parse(["train", "--config", str(config), "--budget", "2m"])))
    assert cfg.train.budget == "2m" and cfg.train.steps is None


def test_malformed_yaml_and_negative_seed_are_one_line_errors(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  dataset: digits\n bad: [\n")
    code, _, err = run_cli(capsys, "train", "--config", str(config), "--out", str(tmp_path / "r"))
    assert code != 0 and "is not valid YAML at line" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "train", "--set", "train.steps=[4", "--out", str(tmp_path / "r"))
    assert code != 0 and "--set 'train.steps=[4'" in err
    code, _, err = run_cli(capsys, "train", "--seed", "-1", "--out", str(tmp_path / "r"))
    assert code != 0 and "train.seed must be an integer in [0, 2**32)" in err
    assert not (tmp_path / "r" / "config.yaml").exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "fashion_mnistt"], "did you mean 'fashion-mnist'"),
        (["--algorithm", "flexmatc"], "did you mean 'flexmatch'"),
        (["--model", "wrn28"], "wrn28_2"),
        (["--dataset", "digits", "--labels-per-class", "500"], "--labels-per-class <="),
        (["--set", "algorithm.treshold=0.5"], "did you mean 'threshold'"),
        (["--set", "train.stepz=5"], "did you mean 'steps'"),
        (["--budget", "soon"], "15m"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, capsys, args, message):
    base = ["--dataset", "digits", "--labels-per-class", "2"]
    code, _, err = run_cli(capsys, "train", "--out", str(tmp_path / "r"), *FAST, *base, *args)
    assert code == 2
    assert err.startswith("fewlabels: error: ") and err.count("\n") == 1
    assert message in err


def test_label_outside_class_list_and_empty_pool(tmp_path, capsys):
    bad = blobs_npz(tmp_path / "bad.npz", bad_label=7)
    code, _, err = run_cli(capsys, "train", "--dataset", str(bad), "--out", str(tmp_path / "a"), *FAST)
    assert code == 2 and "label 7" in err
    full = blobs_npz(tmp_path / "full.npz", unlabeled=0)
    code, _, err = run_cli(capsys, "train", "--dataset", str(full), "--out", str(tmp_path / "b"), *FAST)
    assert code == 2 and "unlabeled pool is empty" in err
    code, _, err = run_cli(
        capsys,
        "train",
        "--dataset",
        str(full),
        "--algorithm",
        "supervised",
        "--out",
        str(tmp_path / "c"),
        *FAST,
    )
    assert code == 0, err


def test_class_without_labeled_example(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    y = np.r_[np.zeros(10), np.ones(10), -np.ones(20)].astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y, classes=np.array(["a", "b", "c"]))
    code, _, err = run_cli(capsys, "train", "--dataset", str(tmp_path / "d.npz"), "--out", str(tmp_path / "r"), *FAST)
    assert code == 2 and "'c'" in err and "no labeled example" in err


def test_corrupt_images_skipped_or_strict(tmp_path, capsys):
    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / "labeled" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 60 * i, dtype=np.uint8)).save(root / "labeled" / cls / f"{i}.png")
    (root / "unlabeled").mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(root / "unlabeled" / f"{i}.png")
    (root / "unlabeled" / "broken.png").write_bytes(b"\x89PNG not really")
    code, _, err = run_cli(capsys, "train", "--dataset", str(root), "--strict", "--out", str(tmp_path / "s"), *FAST)
    assert code == 2 and "broken.png" in err and "--strict" in err
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        code, _, err = run_cli(capsys, "train", "--dataset", str(root), "--out", str(tmp_path / "ok"), *FAST)
    assert code == 0, err
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["skipped_files"] == 1


def test_benchmark_and_report_commands(tmp_path, capsys):
    npz = blobs_npz(tmp_path / "blobs.npz")
    out = tmp_path / "bench"
    args = ["benchmark", "--out", str(out), "--dataset", str(npz), "--algorithms", "pseudo_label"]
    args += ["--labels-per-class", "2", "4", "--seeds", "0", "--steps", "6", "--batch-size", "6"]
    args += ["--unlabeled-ratio", "2", "--eval-every", "3", "--val-per-class", "2", "--no-progress"]
    code, text, err = run_cli(capsys, *args, "--option", "pseudo_label.threshold=0.5", "--set", "train.ema=0.9")
    assert code == 0, err
    rows = list(csv.DictReader((out / "results.csv").open()))
    cells = sorted((r["algorithm"], r["labels_per_class"]) for r in rows)
    assert cells == [
        ("pseudo_label", "2"),
        ("pseudo_label", "4"),
        ("supervised", "2"),
        ("supervised", "4"),
        ("supervised", "all"),
    ]
    assert "| supervised (labels only) |" in text and (out / "accuracy_vs_labels.png").exists()
    cell = out / "runs" / "pseudo_label-2-s0" / "config.yaml"
    assert "threshold: 0.5" in cell.read_text() and "ema: 0.9" in cell.read_text()
    assert "steps: 6" in (out / "runs" / "supervised-4-s0" / "config.yaml").read_text()
    code, _, err = run_cli(capsys, *args[:7], "fixmatc", "--labels-per-class", "2")
    assert code == 2 and "fixmatch" in err and len(err.strip().splitlines()) == 1

    run = out / "runs" / "pseudo_label-4-s0"
    code, text, err = run_cli(capsys, "report", str(run), "--format", "md")
    assert code == 0, err
    report = run / "report" / "report.md"
    assert str(report) in text and "pseudo_label" in report.read_text()
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and "run folder" in err


# ------------------------------------------------------------------------------------------------ predict


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny CNN run on 1x8x8 digits."""
    out = tmp_path_factory.mktemp("predict") / "run"
    argv = ["train", "--dataset", "digits", "--labels-per-class", "2", "--algorithm", "supervised", "--out", str(out)]
    assert main([*argv, *FAST]) == 0
    return out


def digit_images(n: int) -> np.ndarray:
    """n real digits, uint8 (n, 1, 8, 8)."""
    return fewlabels.load_dataset("digits").x_test[:n].numpy()


def save_pngs(x: np.ndarray, folder) -> list:
    folder.mkdir(parents=True)
    paths = [folder / f"{i:02d}.png" for i in range(len(x))]
    for image, path in zip(x, paths, strict=True):
        Image.fromarray(image[0], "L").save(path)  # PNG is lossless: the same pixels come back
    return paths


def test_predict_top_k_columns_are_sorted_and_match_run_probabilities(digits_run, tmp_path, capsys):
    x = digit_images(12)
    np.savez(tmp_path / "x.npz", x=x)
    target = tmp_path / "preds.csv"
    code, out, err = run_cli(
        capsys, "predict", str(digits_run), str(tmp_path / "x.npz"), "--top-k", "3", "--out", str(target)
    )
    assert code == 0, err
    assert out == "" and "predict" in err  # the CSV goes to the file; the progress bar to stderr
    rows = list(csv.reader(target.open()))
    assert rows[0] == ["input", "class", "confidence", "class_2", "confidence_2", "class_3", "confidence_3"]
    probs = Run(digits_run).predict_proba(x)
    classes = Run(digits_run).classes
    assert len(rows) == 13
    for i, row in enumerate(rows[1:]):
        assert row[0] == f"x.npz[{i}]"
        confidences = [float(c) for c in row[2::2]]
        assert confidences == sorted(confidences, reverse=True)
        top = np.argsort(-probs[i])[:3]
        assert row[1::2] == [classes[k] for k in top]
        np.testing.assert_allclose(confidences, probs[i][top], atol=1e-6)

    # K above the class count is capped (every class listed, probabilities summing to 1); stdout by default.
    code, out, err = run_cli(
        capsys, "predict", str(digits_run), str(tmp_path / "x.npz"), "--top-k", "50", "--no-progress"
    )
    rows = list(csv.reader(io.StringIO(out)))
    assert code == 0 and err == ""
    assert len(rows[0]) == 1 + 2 * 10 and rows[0][-2:] == ["class_10", "confidence_10"]
    assert all(sorted(r[1::2]) == classes and abs(sum(float(c) for c in r[2::2]) - 1) < 1e-4 for r in rows[1:])

    code, _, err = run_cli(capsys, "predict", str(digits_run), str(tmp_path / "x.npz"), "--top-k", "0")
    assert code == 2 and err.startswith("fewlabels: error: ") and "top_k" in err and ">= 1" in err
    with pytest.raises(fewlabels.ConfigError, match="top_k"):
        fewlabels.predict(digits_run, tmp_path / "x.npz", top_k=-1)


def test_predict_folder_manifest_and_npz_agree_in_any_batch_size(digits_run, tmp_path, monkeypatch):
    from fewlabels import api

    x = digit_images(10)
    paths = save_pngs(x, tmp_path / "imgs" / "nested")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    np.savez(tmp_path / "x.npz", x=x)
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "manifest.csv"  # relative paths resolve against the CSV's folder
    manifest.write_text("path,label\n" + "".join(f"../imgs/nested/{p.name},\n" for p in reversed(paths)))

    by_folder = fewlabels.predict(digits_run, [tmp_path / "imgs"], top_k=2, batch_size=64)
    assert [Path(p.input).name for p in by_folder] == [p.name for p in paths]
    probs = Run(digits_run).predict_proba(x)
    classes = Run(digits_run).classes
    assert [p.label for p in by_folder] == [classes[k] for k in probs.argmax(-1)]
    np.testing.assert_allclose([p.confidence for p in by_folder], probs.max(-1), atol=1e-6)
    assert all(len(p.classes) == 2 and p.confidences[0] >= p.confidences[1] for p in by_folder)

    def same(a, b) -> bool:
        return all(
            p.classes == q.classes and np.allclose(p.confidences, q.confidences, atol=1e-6)
            for p, q in zip(a, b, strict=True)
        )

    by_manifest = fewlabels.predict(digits_run, str(manifest), top_k=2, batch_size=4)
    assert [Path(p.input).name for p in by_manifest] == [p.name for p in reversed(paths)]
    assert same(by_manifest, list(reversed(by_folder)))
    by_npz = fewlabels.predict(digits_run, [tmp_path / "x.npz"], top_k=2, batch_size=3)
    assert [p.input for p in by_npz] == [f"x.npz[{i}]" for i in range(10)]
    assert same(by_npz, by_folder)

    # Streamed: images are decoded a batch at a time, only when their batch is predicted.
    reads: list[int] = []
    real = api._read_images
    monkeypatch.setattr(api, "_read_images", lambda files, shape: reads.append(len(files)) or real(files, shape))
    stream = api.iter_predictions(digits_run, [tmp_path / "imgs"], top_k=2, batch_size=3)
    assert reads == []
    first = next(stream)
    assert reads == [3]
    rest = list(stream)
    assert reads == [3, 3, 3, 1] and same([first, *rest], by_folder)


def test_predict_names_a_corrupt_image_and_leaves_no_partial_file(digits_run, tmp_path, capsys):
    folder = tmp_path / "imgs"
    save_pngs(digit_images(4), folder)
    (folder / "zz-broken.png").write_bytes(b"\x89PNG not really")
    target = tmp_path / "out" / "preds.csv"
    code, _, err = run_cli(
        capsys, "predict", str(digits_run), str(folder), "--batch-size", "2", "-o", str(target), "--no-progress"
    )
    assert code == 2 and err.startswith("fewlabels: error: ") and err.count("\n") == 1
    assert "zz-broken.png" in err and "cannot read image" in err
    assert not target.exists() and list(target.parent.iterdir()) == []

    code, _, err = run_cli(capsys, "predict", str(digits_run), str(tmp_path / "missing"), "--no-progress")
    assert code == 2 and "does not exist" in err
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nimgs/00.png\nimgs/gone.png\n")
    code, _, err = run_cli(capsys, "predict", str(digits_run), str(manifest), "--no-progress")
    assert code == 2 and "gone.png" in err and "line 3" in err
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 3, 16, 16), np.uint8))
    code, _, err = run_cli(capsys, "predict", str(digits_run), str(tmp_path / "wrong.npz"), "--no-progress")
    assert code == 2 and "(N, 1, 8, 8)" in err


@pytest.mark.parametrize(
    ("command", "module", "function"),
    [
        (["noisy-student"], "fewlabels.pipelines.noisy_student", "noisy_student"),
        (["simclr"], "fewlabels.pipelines.simclr", "simclr"),
        (["distill", "TEACHER"], "fewlabels.pipelines.distill", "distill"),
    ],
)
def test_pipeline_commands_leave_the_config_file_settings_alone(tmp_path, monkeypatch, command, module, function):
    """Without --dataset, --labels-per-class and --seed the pipeline command passes none of them, so --config (then the
    pipeline's own defaults) decides; given flags reach the pipeline. fewlabels train works the same way."""
    import importlib

    calls: list[tuple[tuple, dict]] = []

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise KeyboardInterrupt  # stop the command here, before any printing

    monkeypatch.setattr(importlib.import_module(module), function, record)
    config = str(tmp_path / "c.yaml")
    assert main([*command, "--out", str(tmp_path / "o"), "--config", config]) == 130
    args, kwargs = calls[-1]
    assert kwargs["config"] == config
    given = {**dict(kwargs.get("overrides") or {}), **{k: v for k, v in kwargs.items() if v is not None}}
    for key in ("dataset", "labels_per_class", "seed", "data.dataset", "data.labels_per_class", "train.seed"):
        assert key not in given, key
    flags = ["--dataset", "digits", "--labels-per-class", "4", "--seed", "2"]
    assert main([*command, "--out", str(tmp_path / "o"), "--config", config, *flags]) == 130
    args, kwargs = calls[-1]
    given = {**dict(kwargs.get("overrides") or {}), **{k: v for k, v in kwargs.items() if v is not None}}
    assert given.get("dataset", given.get("data.dataset")) == "digits"
    assert given.get("labels_per_class", given.get("data.labels_per_class")) == 4
    assert given.get("seed", given.get("train.seed")) == 2
