"""The scikit-learn facade: SemiSupervisedClassifier and SemiSupervisedKFold."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import fewlabels
from fewlabels.estimator import SemiSupervisedClassifier, SemiSupervisedKFold, auto_model, unlabeled_mask

FAST = {"steps": 100, "batch_size": 16, "unlabeled_ratio": 2}

# The checks of scikit-learn that cannot apply to a semi-supervised estimator, with the reason (also in the README).
EXPECTED_FAILED_CHECKS = {
    "check_classifiers_classes": "its last case uses -1 as a class label, which scikit-learn's semi-supervised "
    "convention (and ours) reserves for unlabeled samples",
}


@parametrize_with_checks(
    [SemiSupervisedClassifier(**FAST), SemiSupervisedClassifier("supervised", **FAST)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # fully labeled y: "training 'supervised'"
        check(estimator)


@pytest.fixture(scope="module")
def digits_split():
    """Raw digits features (0..16, several constant columns), 4 labels per class, the rest unlabeled."""
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    test, train = order[:500], order[500:]
    y_train = y[train]
    labeled = np.concatenate([np.flatnonzero(y_train == c)[:4] for c in range(10)])
    y_semi = np.full(len(train), -1)
    y_semi[labeled] = y_train[labeled]
    return X[train], y_semi, X[test], y[test]


def test_fixmatch_beats_labels_only_on_raw_features(digits_split):
    """Unscaled features with constant columns (the model and the vector augmentation standardise them)."""
    X, y, X_test, y_test = digits_split
    sup = SemiSupervisedClassifier("supervised", steps=300).fit(X, y).score(X_test, y_test)
    fm = SemiSupervisedClassifier("fixmatch", steps=300).fit(X, y).score(X_test, y_test)
    assert sup > 0.6, sup  # learns at all from 40 raw-scale labels
    assert fm > sup + 0.04, (fm, sup)


def test_string_labels_and_unlabeled_markers(digits_split):
    X, y, X_test, y_test = digits_split
    names = np.array([f"digit-{c}" for c in range(10)], dtype=object)
    y_str = np.where(y >= 0, names[np.maximum(y, 0)], None).astype(object)
    y_str[np.flatnonzero(y < 0)[:5]] = -1
    y_str[np.flatnonzero(y < 0)[5:10]] = "-1"
    assert unlabeled_mask(y_str).sum() == (y < 0).sum()
    clf = SemiSupervisedClassifier("supervised", steps=200).fit(X, y_str)
    assert list(clf.classes_) == sorted(names.tolist())
    pred = clf.predict(X_test)
    assert set(pred) <= set(names.tolist())
    assert clf.score(X_test, names[y_test]) == pytest.approx(np.mean(pred == names[y_test]))
    proba = clf.predict_proba(X_test)
    assert proba.shape == (len(X_test), 10)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-9)


def test_the_run_is_the_engines_run(tmp_path, digits_split):
    """out= keeps a normal run folder per fit: the resolved config, the split (labeled rows = the rows with a label)."""
    X, y, _, _ = digits_split
    out = tmp_path / "runs"
    clf = SemiSupervisedClassifier("fixmatch", steps=20, out=str(out), random_state=3).fit(X, y)
    folder = Path(clf.run_path_)
    assert folder.parent == out and folder.name.startswith("fit-")
    split = json.loads((folder / "split.json").read_text())
    assert sorted(split["labeled"]) == np.flatnonzero(y >= 0).tolist()
    assert len(split["val"]) == 0
    cfg = fewlabels.Run(folder).config
    assert cfg.algorithm.name == "fixmatch" and cfg.train.steps == 20 and cfg.train.seed == 3
    assert cfg.model.name is None and clf.summary_["model"] == "mlp"
    # The estimator's model is the run's final EMA model.
    run_model = fewlabels.Run(folder).load_model()
    x = torch.from_numpy(X[:7].astype(np.float32))
    np.testing.assert_allclose(clf.predict_proba(X[:7]), run_model(x).double().softmax(-1).detach().numpy(), atol=1e-6)
    # A second fit (a refit, a grid search's clones sharing out) trains afresh in its own folder.
    clf.set_params(steps=5).fit(X, y)
    assert Path(clf.run_path_) != folder and fewlabels.Run(clf.run_path_).config.train.steps == 5
    with pytest.raises(fewlabels.ConfigError, match="in-memory arrays.*clf.score"):
        fewlabels.evaluate(folder)


def test_without_out_nothing_is_left_behind(tmp_path, monkeypatch, digits_split):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    X, y, _, _ = digits_split
    clf = SemiSupervisedClassifier("supervised", steps=5).fit(X, y)
    assert clf.run_path_ is None
    assert list(tmp_path.iterdir()) == []


def test_seed_fixes_the_result_and_leaves_the_global_rng_alone(digits_split):
    X, y, X_test, _ = digits_split
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    a = SemiSupervisedClassifier("fixmatch", steps=30, random_state=1).fit(X, y).predict_proba(X_test)
    assert torch.equal(torch.rand(3), expected_draw)  # fit did not reseed the caller's torch RNG
    b = SemiSupervisedClassifier("fixmatch", steps=30, random_state=1).fit(X, y).predict_proba(X_test)
    c = SemiSupervisedClassifier("fixmatch", steps=30, random_state=2).fit(X, y).predict_proba(X_test)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_config_reaches_the_engine_and_clashes_are_refused(tmp_path, digits_split):
    X, y, _, _ = digits_split
    config = {
        "optim.optimizer": "adamw",
        "train.ema": 0.5,
        "algorithm.threshold": 0.8,
        "model.options": {"hidden": [32]},
    }
    clf = SemiSupervisedClassifier("fixmatch", steps=10, config=config, algorithm_options={"lambda_u": 2.0})
    cfg = fewlabels.Run(clf.set_params(out=str(tmp_path)).fit(X, y).run_path_).config
    assert cfg.optim.optimizer == "adamw" and cfg.train.ema == 0.5
    assert dict(cfg.algorithm.options) == {"threshold": 0.8, "lambda_u": 2.0}
    assert dict(cfg.model.options) == {"hidden": [32]}
    for key, param in (("train.seed", "random_state"), ("optim.lr", "lr"), ("algorithm.name", "algorithm")):
        with pytest.raises(ValueError, match=f"{key}.*{param}="):
            SemiSupervisedClassifier(steps=5, config={key: 1}).fit(X, y)
    # A YAML config: its values yield to the parameters, its options merge.
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: {name: fixmatch, threshold: 0.7}\ntrain: {steps: 999, ema: 0.9}\n")
    cfg = fewlabels.Run(
        SemiSupervisedClassifier(steps=5, config=str(path), out=str(tmp_path)).fit(X, y).run_path_
    ).config
    assert cfg.train.steps == 5 and cfg.train.ema == 0.9 and cfg.algorithm.options["threshold"] == 0.7


def test_images_in_every_layout(digits_split):
    X, y, X_test, y_test = digits_split
    pixels = (X / 16 * 255).round().astype(np.uint8).reshape(-1, 8, 8)
    assert auto_model((1, 8, 8)) == "cnn" and auto_model((3, 64, 64)) == "resnet18" and auto_model((5,)) == "mlp"
    clf = SemiSupervisedClassifier("supervised", steps=60).fit(pixels, y)
    assert clf.summary_["model"] == "cnn" and clf.input_shape_ == (1, 8, 8)
    p_gray = clf.predict_proba(pixels[:9])
    # The same images as floats in [0, 1], and as (N, H, W, 1): identical inputs to the model.
    np.testing.assert_allclose(clf.predict_proba(pixels[:9] / 255.0), p_gray, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(pixels[:9, :, :, None]), p_gray, atol=1e-6)
    # Integer pixels 0..255 of any integer dtype, and channel-first (N, 1, H, W): the same inputs.
    np.testing.assert_allclose(clf.predict_proba(pixels[:9].astype(np.int64)), p_gray, atol=1e-6)
    np.testing.assert_allclose(clf.predict_proba(pixels[:9, None]), p_gray, atol=1e-6)
    with pytest.raises(ValueError, match=r"float image.*\[0, 1\]"):
        clf.predict_proba(pixels[:9].astype(np.float64))  # floats must be in [0, 1]
    rgb = np.repeat(pixels[:, :, :, None], 3, axis=3)
    clf_rgb = SemiSupervisedClassifier("supervised", steps=5).fit(rgb, y)
    assert clf_rgb.input_shape_ == (3, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        clf_rgb.predict_proba(pixels[:3])


def test_bad_input_is_named():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="no labeled sample"):
        SemiSupervisedClassifier(**FAST).fit(X, np.full(20, -1))
    with pytest.raises(ValueError, match="1 class"):
        SemiSupervisedClassifier(**FAST).fit(X, np.r_[np.zeros(5), -np.ones(15)])
    with pytest.raises(ValueError, match="continuous|Unknown label type"):
        SemiSupervisedClassifier(**FAST).fit(X, np.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="unknown algorithm|did you mean"):
        SemiSupervisedClassifier("fixmach", **FAST).fit(X, np.r_[np.zeros(5), np.ones(5), -np.ones(10)])
    clf = SemiSupervisedClassifier("supervised", **FAST).fit(X, np.r_[np.zeros(5), np.ones(5), -np.ones(10)])
    with pytest.raises(ValueError, match="2 features"):
        clf.predict(X[:, :2])


def test_fully_labeled_y_trains_supervised_with_a_warning():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(int)
    with pytest.warns(UserWarning, match="no unlabeled sample"):
        clf = SemiSupervisedClassifier("fixmatch", algorithm_options={"threshold": 0.9}, **FAST).fit(X, y)
    assert clf.summary_["algorithm"] == "supervised"


def test_fully_labeled_y_is_checked_and_classic_methods_fit_it_as_scikit_learn_does(digits_split):
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(int)
    with pytest.raises(ValueError, match="did you mean 'fixmatch'"):  # not a silent 'supervised' run
        SemiSupervisedClassifier("fixmtch", **FAST).fit(X, y)
    from fewlabels.algorithms.classic import make_classic

    X, y, X_test, _ = digits_split
    labeled = y != -1
    with pytest.warns(UserWarning, match="fits the labeled samples alone"):
        clf = SemiSupervisedClassifier("self_training", val_per_class=0).fit(X[labeled], y[labeled])
    by_hand = make_classic("self_training", "vector").fit(X[labeled].astype(np.float32), y[labeled])
    np.testing.assert_array_equal(clf.predict(X_test), by_hand.predict(X_test.astype(np.float32)))


def test_a_failed_fit_leaves_the_estimator_as_it_was():
    from sklearn.exceptions import NotFittedError

    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.r_[np.zeros(5), np.ones(5), -np.ones(10)]
    clf = SemiSupervisedClassifier("supervised", **FAST)
    with pytest.raises(ValueError, match="1 class"):
        clf.fit(X, np.r_[np.zeros(5), -np.ones(15)])
    with pytest.raises(NotFittedError):
        clf.predict(X)
    clf.fit(X, y)
    before = clf.predict_proba(X)
    with pytest.raises(ValueError, match="train.ema"):  # fails in the engine, after the labels were read
        clf.set_params(config={"train.ema": 2.0}).fit(X, np.where(y == 1, 7, y))
    np.testing.assert_array_equal(clf.classes_, [0.0, 1.0])  # not the failed fit's [0, 7]
    np.testing.assert_array_equal(clf.predict_proba(X), before)


def test_nested_config_mappings_and_estimator_only_settings_are_refused(tmp_path):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.r_[np.zeros(5), np.ones(5), -np.ones(10)]
    cases = [
        ({"train": {"seed": 5}}, "'train.seed'.*random_state="),
        ({"algorithm": {"name": "uda"}}, "'algorithm.name'.*algorithm="),
        ({"data.dataset": "digits"}, "fit\\(X, y\\)"),
        ({"data": {"classes": ["a"]}}, "data.classes.*before fit"),
    ]
    for config, message in cases:
        with pytest.raises(ValueError, match=message):
            SemiSupervisedClassifier(config=config, **FAST).fit(X, y)
    with pytest.raises(ValueError, match="random_state must be an integer in"):
        SemiSupervisedClassifier(random_state=-1, **FAST).fit(X, y)
    # Nested sections that no parameter decides still reach the engine.
    clf = SemiSupervisedClassifier("supervised", config={"train": {"ema": 0.5}}, out=str(tmp_path), **FAST)
    assert fewlabels.Run(clf.fit(X, y).run_path_).config.train.ema == 0.5


def test_label_markers_and_mixed_types():
    X = np.random.default_rng(0).normal(size=(12, 3))
    ints_with_none = np.array([0, 1, 0, 1, None, None, None, None, None, None, None, None], dtype=object)
    clf = SemiSupervisedClassifier(**FAST).fit(X, ints_with_none)
    assert clf.classes_.tolist() == [0, 1]
    strings_with_nan = np.array(["a", "b", "a", "b"] + [np.nan] * 8, dtype=object)  # pandas' empty cells
    assert SemiSupervisedClassifier(**FAST).fit(X, strings_with_nan).classes_.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="mixes string and numeric"):
        SemiSupervisedClassifier(**FAST).fit(X, np.array(["a", "b", 1, 0] + [-1] * 8, dtype=object))
    with pytest.warns(UserWarning, match="'unlabeled' is treated as a class"):
        SemiSupervisedClassifier(**FAST).fit(X, np.array(["a", "b"] * 2 + ["unlabeled"] * 8, dtype=object))


def test_pandas_inputs(digits_split):
    X, y, X_test, y_test = digits_split
    frame = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    clf = SemiSupervisedClassifier("supervised", steps=50).fit(frame, pd.Series(y))
    assert clf.feature_names_in_.tolist() == frame.columns.tolist()
    test_frame = pd.DataFrame(X_test, columns=frame.columns)
    with pytest.warns(UserWarning, match="feature names"):  # scikit-learn's own warning for a bare array
        plain = clf.predict(X_test)
    np.testing.assert_array_equal(clf.predict(test_frame), plain)


def test_nan_in_float_labels_marks_unlabeled_rows(digits_split):
    """An integer label column with empty cells reads (pandas) as floats with NaN: those rows are unlabeled."""
    X, y, X_test, y_test = digits_split
    y_nan = np.where(y == -1, np.nan, y.astype(float))
    assert unlabeled_mask(y_nan).tolist() == (y == -1).tolist()
    a = SemiSupervisedClassifier("supervised", steps=30, random_state=0).fit(X, y_nan)
    b = SemiSupervisedClassifier("supervised", steps=30, random_state=0).fit(X, y)
    np.testing.assert_array_equal(a.classes_, b.classes_)  # the same classes, as floats
    np.testing.assert_array_equal(a.predict_proba(X_test), b.predict_proba(X_test))
    y_score = np.where(np.arange(len(y_test)) % 2 == 0, np.nan, y_test.astype(float))
    assert a.score(X_test, y_score) == a.score(X_test[1::2], y_test[1::2])


def test_score_leaves_unlabeled_rows_out(digits_split):
    X, y, X_test, y_test = digits_split
    clf = SemiSupervisedClassifier("supervised", steps=50).fit(X, y)
    mixed_y = np.r_[y_test, -np.ones(100, dtype=int)]
    mixed_x = np.r_[X_test, X_test[:100]]
    assert clf.score(mixed_x, mixed_y) == pytest.approx(clf.score(X_test, y_test))


def test_pickle_and_clone(digits_split):
    X, y, X_test, _ = digits_split
    clf = SemiSupervisedClassifier("supervised", steps=20, algorithm_options=None).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X_test), clf.predict_proba(X_test))
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params() and not hasattr(fresh, "classes_")


def test_semi_supervised_kfold_keeps_unlabeled_rows_in_training():
    y = np.r_[np.repeat([0, 1, 2], 6), -np.ones(10, dtype=int)]
    unlabeled = set(np.flatnonzero(y < 0).tolist())
    cv = SemiSupervisedKFold(3, random_state=0)
    folds = list(cv.split(np.zeros((len(y), 2)), y))
    assert len(folds) == cv.get_n_splits() == 3
    tested = []
    for train, test in folds:
        assert unlabeled <= set(train.tolist())
        assert (y[test] >= 0).all()
        assert np.bincount(y[test]).tolist() == [2, 2, 2]  # stratified
        assert not set(train.tolist()) & set(test.tolist())
        tested += test.tolist()
    assert sorted(tested) == np.flatnonzero(y >= 0).tolist()  # every labeled row is tested exactly once
    with pytest.raises(ValueError, match="labeled rows"):
        list(SemiSupervisedKFold(5).split(np.zeros((6, 1)), np.r_[0, 1, 0, -1, -1, -1]))


def test_pipeline_and_grid_search(digits_split):
    X, y, X_test, y_test = digits_split
    pipe = Pipeline([("scale", StandardScaler()), ("clf", SemiSupervisedClassifier("supervised", steps=40))])
    grid = GridSearchCV(pipe, {"clf__lr": [1e-5, 0.1]}, cv=SemiSupervisedKFold(2, shuffle=True, random_state=0))
    grid.fit(X, y)
    # lr 1e-5 barely moves the random init in 40 steps: the validation folds must tell the two apart.
    assert grid.best_params_["clf__lr"] == 0.1
    low, high = grid.cv_results_["mean_test_score"]
    assert high > low + 0.2
    assert grid.score(X_test, y_test) > 0.5
    # Each fold's score is computed on its labeled test rows only: unlabeled rows never reach score().
    cv, est = SemiSupervisedKFold(2), SemiSupervisedClassifier("supervised", steps=20, random_state=0)
    scores = cross_val_score(est, X, y, cv=cv)
    for (train, test), score in zip(cv.split(X, y), scores, strict=True):
        assert (y[test] >= 0).all()
        assert score == pytest.approx(clone(est).fit(X[train], y[train]).score(X[test], y[test]))


def test_constant_features_keep_unit_scale():
    from fewlabels.data import DataBundle

    x = torch.tensor([[1.0, 7.0], [3.0, 7.0], [5.0, 7.0]])
    bundle = DataBundle("t", x, torch.tensor([0, 1, -1]), ["a", "b"], modality="vector")
    mean, std = bundle.channel_stats()
    assert mean == [3.0, 7.0] and std == [2.0, 1.0]


@pytest.mark.parametrize("algorithm", ["label_spreading", "self_training"])
def test_classic_baselines_through_the_estimator(algorithm, digits_split):
    """The estimator wraps scikit-learn's own method: same predictions as the Pipeline fitted by hand."""
    from fewlabels.algorithms.classic import make_classic

    X, y, X_test, y_test = digits_split
    clf = SemiSupervisedClassifier(
        algorithm, algorithm_options={"n_neighbors": 10} if algorithm == "label_spreading" else None
    )
    clf.fit(X, y)
    assert clf.model_ is None and clf.summary_["steps"] == 0
    options = {"n_neighbors": 10} if algorithm == "label_spreading" else {}
    by_hand = make_classic(algorithm, "vector", **options).fit(X.astype(np.float32), y)
    np.testing.assert_array_equal(clf.predict(X_test), by_hand.predict(X_test.astype(np.float32)))
    np.testing.assert_allclose(clf.predict_proba(X_test), by_hand.predict_proba(X_test.astype(np.float32)))
    assert clf.score(X_test, y_test) > 0.7
