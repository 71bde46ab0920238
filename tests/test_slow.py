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


@pytest.mark.filterwarnings("ignore:the student model .cnn. has no stochastic depth")
def test_a_noised_student_beats_its_teacher_on_fashion_mnist(tmp_path):
    """Noisy Student's claim at small scale (benchmarks/results/noisy_student.md, seed 0: 72.8% -> 75.2%)."""
    from fewlabels.pipelines.noisy_student import noisy_student

    overrides = {
        "train.steps": 2000,
        "train.batch_size": 32,
        "train.unlabeled_ratio": 7,
        "train.eval_every": 400,
        "train.progress": False,
        "data.val_per_class": 50,
    }
    result = noisy_student(tmp_path / "ns", dataset="fashion-mnist", labels_per_class=10, iterations=1, seed=0,
                           overrides=overrides)  # fmt: skip
    teacher, student = result.teacher.summary["test_accuracy"], result.students[0].summary["test_accuracy"]
    # Over seeds 0-2 the first noised student gains 2.0-2.5 points; 1 point leaves room for the machine's noise.
    assert student > teacher + 0.01, (teacher, student)
