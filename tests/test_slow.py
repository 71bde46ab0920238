"""Longer training checks kept out of CI (`make test-slow`): FixMatch clearly beats labels only on Fashion-MNIST."""

from __future__ import annotations

import pytest

import fewlabels
from fewlabels.errors import DataError

pytestmark = pytest.mark.slow

SETTINGS = {
    "data.dataset": "fashion-mnist",
    "data.labels_per_class": 10,
    "train.steps": 800,
    "train.eval_every": 400,
    "train.progress": False,
}


def test_fixmatch_beats_supervised_on_fashion_mnist(tmp_path):
    try:
        fewlabels.load_dataset("fashion-mnist")
    except DataError as exc:  # the Debian package is missing and we are not root
        pytest.fail(f"Fashion-MNIST is needed for this check: {exc}")
    supervised = fewlabels.train(**SETTINGS, **{"algorithm.name": "supervised", "out": str(tmp_path / "s")})
    fixmatch = fewlabels.train(**SETTINGS, **{"algorithm.name": "fixmatch", "out": str(tmp_path / "f")})
    gain = fixmatch.summary["test_accuracy"] - supervised.summary["test_accuracy"]
    assert gain > 0.05, (fixmatch.summary["test_accuracy"], supervised.summary["test_accuracy"])
    rows = [r for r in fixmatch.metrics() if "mask" in r]
    assert rows[-1]["mask"] > 0.5 and rows[-1]["pseudo_accuracy"] > 0.8
