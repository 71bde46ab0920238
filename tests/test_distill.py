"""Distillation as function matching: the teacher is fixed (eval mode, no gradient) and sees exactly the student's
input; the four modes of the paper's ablation; a short run compresses a CNN teacher into an MLP student."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fewlabels
from fewlabels.algorithms import Batch, BatchPart, StepContext, create_algorithm
from fewlabels.algorithms.common import kl_divergence
from fewlabels.errors import ConfigError

FAST = {"train.progress": False, "train.batch_size": 32, "train.unlabeled_ratio": 4, "train.log_every": 50}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A CNN trained on every digits label: the model to compress."""
    out = tmp_path_factory.mktemp("teacher")
    return fewlabels.train(
        **FAST,
        **{"data.dataset": "digits", "algorithm.name": "supervised", "train.steps": 300, "out": str(out)},
    )


class Spy(nn.Module):
    """Records every input it sees; logits are a fixed linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.linear(x.flatten(1))


def batch(views: dict[str, torch.Tensor]) -> Batch:
    labeled = BatchPart({"weak": torch.rand(2, 1, 8, 8)}, y=torch.tensor([0, 1]))
    return Batch(labeled=labeled, unlabeled=BatchPart(views, index=torch.arange(len(next(iter(views.values()))))))


def ctx() -> StepContext:
    return StepContext(step=0, total_steps=10, num_classes=10)


def with_spy_teacher(algo) -> Spy:
    spy = Spy()
    algo.teacher_model = spy
    return spy


def test_function_matching_feeds_the_same_mixed_image_to_both(teacher):
    algo = create_algorithm("distill", 10, 6, teacher=str(teacher.path))
    spy_t, student = with_spy_teacher(algo), Spy()
    u = torch.rand(6, 1, 8, 8)
    torch.manual_seed(0)
    out = algo.step(student, batch({"weak": u}), ctx())
    assert len(spy_t.seen) == 1 and torch.equal(spy_t.seen[0], student.seen[0])
    assert not torch.equal(student.seen[0], u)  # mixed with MixUp, lam ~ Uniform(0, 1)
    assert not spy_t.training  # the teacher runs in eval mode
    out.loss.backward()
    assert spy_t.linear.weight.grad is None and student.linear.weight.grad is not None
    with torch.no_grad():
        target = spy_t.linear(student.seen[0].flatten(1)).softmax(-1)
    assert out.loss.item() == pytest.approx(
        kl_divergence(target, student.linear(student.seen[0].flatten(1))).mean().item(), rel=1e-5
    )


def test_tempered_loss_by_hand_keeps_the_t_squared_scale(teacher):
    options = {"mode": "consistent", "temperature": 2.0, "lambda_l": 1.0}
    algo = create_algorithm("distill", 10, 6, teacher=str(teacher.path), **options)
    spy_t, student = with_spy_teacher(algo), Spy()
    u = torch.rand(6, 1, 8, 8)
    b = batch({"weak": u})
    out = algo.step(student, b, ctx())
    with torch.no_grad():
        p = (spy_t.linear(u.flatten(1)) / 2).softmax(-1)
        log_q = (student.linear(u.flatten(1)) / 2).log_softmax(-1)
        kl = (p * (p.log() - log_q)).sum(-1).mean()
        logits_l = student.linear(b.labeled.views["weak"].flatten(1))
        ce = -logits_l.log_softmax(-1)[[0, 1], b.labeled.y].mean()
    assert out.loss.item() == pytest.approx(4 * kl.item() + ce.item(), rel=1e-5)
    assert out.logs["loss_u"].item() == pytest.approx(4 * kl.item(), rel=1e-5)


def test_consistent_and_independent_views(teacher):
    u, u2 = torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8)
    consistent = create_algorithm("distill", 10, 6, teacher=str(teacher.path), mode="consistent")
    spy_t, student = with_spy_teacher(consistent), Spy()
    consistent.step(student, batch({"weak": u}), ctx())
    assert torch.equal(spy_t.seen[0], u) and torch.equal(student.seen[0], u)  # no MixUp
    independent = create_algorithm("distill", 10, 6, teacher=str(teacher.path), mode="independent")
    assert independent.views.unlabeled == ("weak", "weak2")
    spy_t, student = with_spy_teacher(independent), Spy()
    independent.step(student, batch({"weak": u, "weak2": u2}), ctx())
    assert torch.equal(student.seen[0], u) and torch.equal(spy_t.seen[0], u2)


def test_fixed_mode_labels_each_sample_once_on_the_unaugmented_image(teacher):
    algo = create_algorithm("distill", 10, 6, teacher=str(teacher.path), mode="fixed")
    assert algo.views.unlabeled == ("none", "weak")
    spy_t = with_spy_teacher(algo)
    clean, aug = torch.rand(6, 1, 8, 8), torch.rand(6, 1, 8, 8)
    b = batch({"none": clean, "weak": aug})
    b.unlabeled.index = torch.tensor([0, 1, 2, 3, 4, 5])
    algo.step(Spy(), b, ctx())
    b.unlabeled.index = torch.tensor([4, 5, 0, 1, 2, 3])
    b.unlabeled.views = {"none": clean[[4, 5, 0, 1, 2, 3]], "weak": aug}
    algo.step(Spy(), b, ctx())
    assert len(spy_t.seen) == 1 and torch.equal(spy_t.seen[0], clean)  # cached: no second teacher pass
    with torch.no_grad():
        assert torch.allclose(algo.cache, spy_t.linear(clean.flatten(1)).softmax(-1))


def test_bad_options_and_changed_teacher_are_refused(teacher, tmp_path):
    with pytest.raises(ConfigError, match="algorithm.teacher"):
        create_algorithm("distill", 10, 6)
    with pytest.raises(ConfigError, match="function_matching"):
        create_algorithm("distill", 10, 6, teacher=str(teacher.path), mode="cached")
    with pytest.raises(ConfigError, match="10 classes"):
        create_algorithm("distill", 3, 6, teacher=str(teacher.path))
    algo = create_algorithm("distill", 10, 6, teacher=str(teacher.path))
    with pytest.raises(ConfigError, match="teacher's weights changed"):
        algo.load_state_dict({"teacher_sha256": "0" * 64})
    algo.load_state_dict(algo.state_dict())


def test_distilling_a_cnn_into_an_mlp_recovers_the_teacher(teacher, tmp_path):
    common = {**FAST, "data.dataset": "digits", "data.labels_per_class": 2, "train.steps": 300}
    supervised = fewlabels.train(**common, **{"algorithm.name": "supervised", "out": str(tmp_path / "sup")})
    student = fewlabels.train(
        **common,
        **{
            "algorithm.name": "distill",
            "algorithm.teacher": str(teacher.path),
            "model.name": "mlp",
            "out": str(tmp_path / "student"),
        },
    )
    t, s, b = (r.summary["test_accuracy"] for r in (teacher, student, supervised))
    assert t > 0.9
    assert s > b + 0.1  # the unlabeled images carry the teacher's knowledge; 2 labels per class do not
    assert s > t - 0.08
    rows = [r for r in student.metrics() if "agreement" in r]
    assert rows[-1]["agreement"] > rows[0]["agreement"]


def test_distill_command_inherits_the_teacher_data_and_resumes(teacher, tmp_path, capsys):
    from fewlabels.cli import main
    from fewlabels.config import resolve_config

    out = tmp_path / "cli-student"
    argv = ["distill", str(teacher.path), "--out", str(out), "--model", "mlp", "--mode", "fixed"]
    argv += ["--steps", "6", "--batch-size", "8", "--unlabeled-ratio", "2", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    cfg = resolve_config(out / "config.yaml")
    assert cfg.algorithm.name == "distill" and cfg.model.name == "mlp"
    assert cfg.algorithm.options["mode"] == "fixed"
    assert cfg.algorithm.options["teacher"] == str(teacher.path.absolute())
    assert cfg.data.dataset == "digits" and cfg.data.labels_per_class is None  # the teacher's data: every image
    before = (out / "summary.json").stat().st_mtime_ns
    assert main(argv) == 0  # a finished stage is not trained again
    assert (out / "summary.json").stat().st_mtime_ns == before
    assert main([*argv[:-1], "--steps", "7"]) == 2 and "train.steps: 6 -> 7" in capsys.readouterr().err


def test_user_algorithm_options_reach_the_student_and_unused_ones_are_refused(teacher, tmp_path, capsys):
    from fewlabels.cli import main
    from fewlabels.config import resolve_config
    from fewlabels.pipelines.distill import distill

    out = tmp_path / "with-labels"
    argv = ["distill", str(teacher.path), "--out", str(out), "--model", "mlp", "--steps", "4", "--batch-size", "8"]
    argv += ["--unlabeled-ratio", "2", "--no-progress", "--set", "algorithm.lambda_l=1"]
    assert main([*argv, "--set", "algorithm.temperature=2"]) == 0, capsys.readouterr().err
    options = resolve_config(out / "config.yaml").algorithm.options
    assert options == {
        "teacher": str(teacher.path.absolute()),
        "mode": "function_matching",
        "which": "model",
        "lambda_l": 1,
        "temperature": 2,
    }
    # an option the distill algorithm does not take, or one the pipeline sets itself: refused before any training
    with pytest.raises(ConfigError, match=r"'threshold' is not an option of any distill stage algorithm \(distill\)"):
        distill(teacher.path, tmp_path / "bad", overrides={"algorithm.threshold": 0.9})
    with pytest.raises(ConfigError, match="'mode' is set by the distill pipeline itself"):
        distill(teacher.path, tmp_path / "bad", config={"algorithm": {"name": "distill", "mode": "fixed"}})
    assert not (tmp_path / "bad").exists()
    assert main([*argv, "--out", str(tmp_path / "bad"), "--set", "algorithm.threshold=0.9"]) == 2
    assert "'threshold'" in capsys.readouterr().err


def test_student_inherits_the_teacher_data_section_and_seed(tmp_path):
    import numpy as np

    from fewlabels.data.split import Split
    from fewlabels.pipelines.distill import distill

    data = {"data.classes": [0, 1, 2, 3], "data.val_per_class": 7, "data.labels_per_class": 5}
    small = {**FAST, "train.steps": 4, "train.batch_size": 8, "train.unlabeled_ratio": 2}
    teacher = fewlabels.train(
        **small,
        **data,
        **{"data.dataset": "digits", "train.seed": 3, "algorithm.name": "supervised", "out": str(tmp_path / "t")},
    )
    student = distill(teacher.path, tmp_path / "s", model="mlp", overrides=small)
    assert student.config.data == teacher.config.data and student.config.train.seed == 3
    t_split, s_split = (Split.load(r.path / "split.json") for r in (teacher, student))
    assert np.array_equal(t_split.val, s_split.val)  # never a row the teacher trained on
    assert np.array_equal(t_split.labeled, s_split.labeled)
    # what the caller sets wins, key by key; the rest is still the teacher's
    other = distill(
        teacher.path,
        tmp_path / "s2",
        model="mlp",
        config={"data": {"val_per_class": 5}},
        overrides={**small, "train.seed": 4, "data.num_labels": 8},
    )
    d = other.config.data
    assert (d.val_per_class, d.num_labels, d.labels_per_class, other.config.train.seed) == (5, 8, None, 4)
    assert d.classes == teacher.config.data.classes and d.dataset == "digits"
