"""Classic baselines (scikit-learn label spreading, label propagation, self-training) in the engine's harness."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelPropagation, LabelSpreading, SelfTrainingClassifier

import fewlabels
from fewlabels import benchmark
from fewlabels.algorithms.classic import (
    CLASSIC,
    classic_options,
    is_classic,
    list_classic,
    make_classic,
    resolve_algorithm_name,
)
from fewlabels.benchmark import canonical_algorithm, parse_algorithm_option, run_benchmark
from fewlabels.data import Split, load_dataset, make_split
from fewlabels.engine.classic import fit_rows
from fewlabels.engine.run import Run
from fewlabels.errors import ConfigError
from fewlabels.hardware import cpu_model


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the machine is shared and these runs are tiny."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def classic(tmp_path, algorithm, dataset="digits", lpc=10, name="run", **options):
    overrides = {
        "data.dataset": dataset,
        "data.labels_per_class": lpc,
        "algorithm.name": algorithm,
        "out": str(tmp_path / name),
        **{f"algorithm.{k}": v for k, v in options.items()},
    }
    return fewlabels.train(**overrides), overrides


@pytest.fixture(scope="module")
def deep_run(tmp_path_factory):
    """A two-step supervised digits run with the same seed and labels per class as `classic(...)`'s default."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("deep") / "run"
    return fewlabels.train(
        **{
            "data.dataset": "digits",
            "data.labels_per_class": 10,
            "algorithm.name": "supervised",
            "train.steps": 2,
            "train.batch_size": 16,
            "train.eval_every": 2,
            "train.progress": False,
            "out": str(out),
        }
    )


def by_hand(run, estimator):
    """Fit scikit-learn's own estimator on the run's split (rebuilt from split.json), preprocessed as documented:
    images flattened and divided by 255, vectors standardized on every row the fit sees."""
    bundle = load_dataset(run.config.data.dataset)
    split = Split.load(run.path / "split.json")
    rows = np.union1d(split.labeled, split.unlabeled)
    x, y_all = bundle.x_train.numpy(), bundle.y_train.numpy()
    y = np.where(np.isin(rows, split.labeled), y_all[rows], -1)
    if bundle.modality == "image":

        def features(a):
            return a.reshape(len(a), -1).astype(np.float32) / np.float32(255)
    else:
        scaler = StandardScaler().fit(x[rows])
        features = scaler.transform
    estimator.fit(features(x[rows]), y)
    x_test, y_test = bundle.x_test.numpy(), bundle.y_test.numpy()
    x_val, y_val = x[split.val], y_all[split.val]
    return estimator, features, (x_test, y_test), (x_val, y_val)


CASES = {
    "label_spreading on digits images": (
        "digits",
        "label_spreading",
        {},
        lambda: LabelSpreading(kernel="knn", n_neighbors=7, alpha=0.2),
    ),
    "self_training on breast_cancer vectors": (
        "breast_cancer",
        "self_training",
        {},
        lambda: SelfTrainingClassifier(estimator=LogisticRegression(max_iter=1000), threshold=0.75),
    ),
    "label_propagation with an rbf kernel on wine": (
        "wine",
        "label_propagation",
        {"kernel": "rbf", "gamma": 0.1},
        lambda: LabelPropagation(kernel="rbf", gamma=0.1, max_iter=1000),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_run_equals_scikit_learn_fitted_by_hand_on_the_same_split(tmp_path, case):
    dataset, algorithm, options, make = CASES[case]
    run, _ = classic(tmp_path, algorithm, dataset=dataset, lpc=4, **options)
    s = run.summary
    estimator, features, (x_test, y_test), (x_val, y_val) = by_hand(run, make())
    pred = estimator.predict(features(x_test))
    assert s["test_accuracy"] == pytest.approx(accuracy_score(y_test, pred), abs=1e-6)
    assert s["confusion_matrix"] == confusion_matrix(y_test, pred).tolist()  # the very same predictions
    assert s["val_accuracy"] == pytest.approx(accuracy_score(y_val, estimator.predict(features(x_val))), abs=1e-6)
    assert s["test_accuracy_median_last"] == s["test_accuracy"] and s["steps"] == 0
    if dataset == "breast_cancer":
        assert s["test_auc"] == pytest.approx(roc_auc_score(y_test, estimator.predict_proba(features(x_test))[:, 1]))
    # The in-memory pipeline `train` hands back is that fit.
    assert np.array_equal(run.classic_model.predict(x_test), pred)
    [row] = run.metrics()  # one evaluation row, shaped as the deep loop's
    assert row["step"] == 0 and row["kind"] == "eval"
    assert row["test_accuracy"] == s["test_accuracy"] and row["val_accuracy"] == s["val_accuracy"]


def test_the_fit_sees_exactly_the_deep_runs_labeled_rows(tmp_path, monkeypatch, deep_run):
    seen = {}
    real_fit = Pipeline.fit

    def spy(self, x, y, **kw):
        seen["x"], seen["y"] = x, y
        return real_fit(self, x, y, **kw)

    monkeypatch.setattr(Pipeline, "fit", spy)
    run, _ = classic(tmp_path, "label_spreading")
    split = Split.load(run.path / "split.json")
    assert split == Split.load(deep_run.path / "split.json")  # the same labeled rows, pool and validation
    bundle = load_dataset("digits")
    rows = np.union1d(split.labeled, split.unlabeled)
    assert np.intersect1d(rows, split.val).size == 0  # validation rows are never fitted on
    y = seen["y"]
    assert int((y != -1).sum()) == run.summary["num_labels"] == deep_run.summary["num_labels"] == 100
    assert np.array_equal(rows[y != -1], split.labeled)
    assert np.array_equal(y[y != -1], bundle.y_train.numpy()[split.labeled])
    assert np.array_equal(seen["x"], bundle.x_train.numpy()[rows])
    assert len(y) == run.summary["num_unlabeled"]  # the pool holds the labeled rows too (FixMatch convention)
    x_fit, y_fit = fit_rows(bundle, split)
    assert np.array_equal(x_fit, seen["x"]) and np.array_equal(y_fit, y)


def test_summary_keys_match_a_deep_run(tmp_path, deep_run):
    run, _ = classic(tmp_path, "self_training")
    s = run.summary
    assert set(s) == set(deep_run.summary)
    assert s["algorithm"] == "self_training" and s["dataset"] == "digits" and s["seed"] == 0
    assert s["model"] == "scikit-learn SelfTrainingClassifier(LogisticRegression)"
    assert s["wall_seconds"] >= 0 and s["num_val"] == deep_run.summary["num_val"]
    assert {p.name for p in run.path.iterdir()} == {"config.yaml", "split.json", "metrics.jsonl", "summary.json"}
    assert fewlabels.resolve_config(run.path / "config.yaml").algorithm.name == "self_training"


def test_two_class_runs_report_auc_like_deep_runs(tmp_path):
    run, _ = classic(tmp_path, "label_spreading", dataset="breast_cancer", lpc=5)
    assert {"val_auc", "test_auc"} <= set(run.summary)
    assert 0.5 < run.summary["test_auc"] <= 1.0


def test_finished_run_is_returned_refused_without_resume_and_checked_with_it(tmp_path, monkeypatch):
    run, overrides = classic(tmp_path, "label_propagation")
    summary = (run.path / "summary.json").read_text()

    def no_fit(*args, **kwargs):
        raise AssertionError("a finished classic run was fitted again")

    monkeypatch.setattr(Pipeline, "fit", no_fit)
    again = fewlabels.train(**overrides, resume=True)
    assert again.path == run.path and (run.path / "summary.json").read_text() == summary
    with pytest.raises(ConfigError, match="already holds a run: add --resume"):
        fewlabels.train(**overrides)
    with pytest.raises(ConfigError, match=r"n_neighbors: .*-> 9"):
        fewlabels.train(**overrides, **{"algorithm.n_neighbors": 9}, resume=True)


def test_an_interrupted_fit_starts_afresh_on_resume(tmp_path, monkeypatch):
    overrides = {"data.labels_per_class": 4, "algorithm.name": "label_spreading", "out": str(tmp_path / "r")}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        fewlabels.train(**overrides)
    monkeypatch.undo()
    run = fewlabels.train(**overrides, resume=True)  # no checkpoint to continue: one fit is all it takes
    whole = fewlabels.train(**{**overrides, "out": str(tmp_path / "whole")})  # never interrupted
    for key in ("test_accuracy", "val_accuracy", "num_labels", "hardware"):
        assert run.summary[key] == whole.summary[key], key
    assert run.summary["hardware"].startswith(cpu_model())
    assert run.summary["test_accuracy"] > 0.5


def test_load_model_evaluate_and_predict_say_classic_runs_keep_no_model(tmp_path):
    run, _ = classic(tmp_path, "label_spreading", lpc=4)
    message = r"classic baselines keep no model.*SemiSupervisedClassifier\(algorithm='label_spreading'\)"
    with pytest.raises(ConfigError, match=message):
        Run(run.path).load_model()
    with pytest.raises(ConfigError, match=message):
        Run(run.path).predict(np.zeros((1, 1, 8, 8), np.uint8))
    with pytest.raises(ConfigError, match=message):
        fewlabels.evaluate(run.path)
    with pytest.raises(ConfigError, match=message):
        fewlabels.predict(run.path, ["anything.png"])


def test_registry_names_suggestions_and_duplicates():
    assert list_classic() == ["label_propagation", "label_spreading", "self_training"]
    assert is_classic("label-spreading") and is_classic("Self_Training") and not is_classic("fixmatch")
    assert resolve_algorithm_name("label-propagation") == "label_propagation"
    assert canonical_algorithm("self-training") == "self_training" and canonical_algorithm("pseudo-label")
    assert parse_algorithm_option("label-spreading.n_neighbors=10") == ("label_spreading", "n_neighbors", 10)
    # Typos get suggestions from both registries, in every entry point.
    with pytest.raises(ConfigError, match="did you mean 'label_spreading'.*classic baseline: label_propagation"):
        resolve_algorithm_name("label_spreadng")
    with pytest.raises(ConfigError, match="did you mean 'fixmatch'"):
        canonical_algorithm("fixmach")
    with pytest.raises(ConfigError, match="did you mean 'self_training'"):
        fewlabels.train(**{"algorithm.name": "self_trainin", "out": "never-made"})
    with pytest.raises(ValueError, match="already registered"):
        CLASSIC.register("label_spreading")(lambda seed=0: None)
    assert list_classic() == ["label_propagation", "label_spreading", "self_training"]


def test_options_are_checked_by_name_and_value():
    assert classic_options("label_spreading") == {
        "kernel": "knn",
        "n_neighbors": 7,
        "alpha": 0.2,
        "gamma": None,
        "max_iter": 30,
        "tol": 1e-3,
    }
    assert set(classic_options("self_training")) == {"base", "threshold", "criterion", "k_best", "max_iter"}
    with pytest.raises(ConfigError, match=r"no option 'neighbors': did you mean 'n_neighbors'.*kernel, n_neighbors"):
        make_classic("label_spreading", "image", neighbors=3)
    with pytest.raises(ConfigError, match="'alpha' parameter of LabelSpreading"):
        make_classic("label_spreading", "vector", alpha=2.0)
    with pytest.raises(ConfigError, match="kernel must be 'knn' or 'rbf'"):
        make_classic("label_propagation", "vector", kernel="poly")
    with pytest.raises(ConfigError, match="gamma applies to kernel='rbf' only"):
        make_classic("label_propagation", "vector", gamma=1.0)
    with pytest.raises(ConfigError, match="base must be one of 'logistic_regression', 'svc'"):
        make_classic("self_training", "vector", base="tree")
    with pytest.raises(ConfigError, match="'criterion' parameter"):
        make_classic("self_training", "vector", criterion="best")
    svc = make_classic("self_training", "vector", base="svc", criterion="k_best", k_best=5, seed=3)
    inner = svc.named_steps["classifier"]
    assert inner.criterion == "k_best" and inner.estimator.probability and inner.estimator.random_state == 3
    assert isinstance(make_classic("label_spreading", "vector").named_steps["features"], StandardScaler)


def test_rbf_kernel_needs_gamma_and_refuses_a_matrix_that_would_not_fit():
    with pytest.raises(ConfigError, match="kernel='rbf' needs gamma"):
        make_classic("label_spreading", "vector", kernel="rbf")
    pipeline = make_classic("label_spreading", "vector", kernel="rbf", gamma=1.0)
    x = np.random.default_rng(0).normal(size=(20_000, 2)).astype(np.float32)  # 20,000^2 doubles: 3.2 GB
    y = np.full(len(x), -1)
    y[:2] = [0, 1]
    with pytest.raises(ConfigError, match=r"dense 20,000 x 20,000 matrix \(3\.2 GB.*use kernel='knn'"):
        pipeline.fit(x, y)
    knn = make_classic("label_spreading", "vector").fit(x[:2000], y[:2000])  # the sparse graph is fine
    assert set(knn.predict(x[:10])) <= {0, 1}


def test_benchmark_grid_writes_classic_rows(tmp_path, monkeypatch):
    out = tmp_path / "bench"
    fast = {"train.steps": 4, "train.eval_every": 2, "train.batch_size": 16, "train.unlabeled_ratio": 2}
    grid = {
        "dataset": "digits",
        "algorithms": ["label_spreading", "self-training"],
        "labels_per_class": [4],
        "seeds": [0],
        "overrides": fast,
        "algorithm_options": {"label_spreading": {"n_neighbors": 10}},
        "ceiling": False,
    }
    result = run_benchmark(out, **grid)
    with open(out / "results.csv", newline="") as f:
        rows = {r["algorithm"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["supervised", "label_spreading", "self_training"]
    for algorithm, row in rows.items():
        summary = json.loads((out / row["run"] / "summary.json").read_text())
        assert float(row["test_accuracy"]) == summary["test_accuracy"] and row["num_labels"] == "40"
        assert row["steps"] == ("4" if algorithm == "supervised" else "0")
    split = {a: Split.load(out / rows[a]["run"] / "split.json") for a in rows}
    assert split["label_spreading"] == split["supervised"] == split["self_training"]
    assert fewlabels.resolve_config(out / "runs/label_spreading-4-s0/config.yaml").algorithm.options == {
        "n_neighbors": 10
    }
    report = (out / "report.md").read_text()
    table = {line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")}
    for algorithm in ("label_spreading", "self_training"):
        accuracy = 100 * float(rows[algorithm]["test_accuracy"])
        assert f"| {accuracy:.1f} / {accuracy:.1f} | 0 |" in table[algorithm]
    assert "Classic baselines (label_spreading, self_training): one scikit-learn fit" in report
    assert (out / "accuracy_vs_labels.png").stat().st_size > 1000
    assert {r["algorithm"] for r in result.rows} == set(rows)

    monkeypatch.setattr(benchmark, "train", lambda *a, **k: pytest.fail("a finished cell was trained again"))
    assert len(run_benchmark(out, **grid).skipped) == 3
    with pytest.raises(ConfigError, match="no option 'treshold': did you mean 'threshold'"):
        run_benchmark(tmp_path / "never", **{**grid, "algorithm_options": {"self_training": {"treshold": 0.9}}})
    assert not (tmp_path / "never").exists()


def test_label_spreading_beats_logistic_regression_on_the_labels_alone(tmp_path):
    bundle = load_dataset("digits")
    x_test = bundle.x_test.numpy().reshape(len(bundle.x_test), -1) / 255.0
    for seed in (0, 1):
        run = fewlabels.train(
            **{
                "data.labels_per_class": 10,
                "algorithm.name": "label_spreading",
                "train.seed": seed,
                "out": str(tmp_path / f"s{seed}"),
            }
        )
        split = make_split(bundle, 10, seed=seed)
        x = bundle.x_train.numpy()[split.labeled].reshape(len(split.labeled), -1) / 255.0
        logistic = LogisticRegression(max_iter=1000).fit(x, bundle.y_train.numpy()[split.labeled])
        labels_only = accuracy_score(bundle.y_test.numpy(), logistic.predict(x_test))
        assert run.summary["num_labels"] == 100
        assert run.summary["test_accuracy"] > labels_only + 0.02, (seed, run.summary["test_accuracy"], labels_only)
