"""Noisy Student: the student step's loss by hand, and the pipeline's stages, noise settings, resume and refusals."""

from __future__ import annotations

import json
import math

import pytest
import torch
from engine_killer import KillSwitch
from torch import nn

import fewlabels
from fewlabels.algorithms import Batch, BatchPart, StepContext, create_algorithm
from fewlabels.config import resolve_config
from fewlabels.data import load_data
from fewlabels.data.split import Split
from fewlabels.errors import ConfigError
from fewlabels.pipelines.noisy_student import noisy_student
from fewlabels.pipelines.pseudo_label import PseudoLabels, Selection

FAST = {
    "train.steps": 30,
    "train.batch_size": 16,
    "train.unlabeled_ratio": 2,
    "train.eval_every": 15,
    "train.log_every": 10,
    "train.checkpoint_every": 10,
    "train.progress": False,
}


def selection_file(tmp_path, index, targets) -> str:
    path = tmp_path / "selection.safetensors"
    Selection(
        index=torch.tensor(index),
        targets=torch.tensor(targets),
        class_counts=torch.tensor([1, 1]),
        kept_before_balance=torch.tensor([1, 1]),
        per_class=1,
        threshold=0.3,
        classes=["a", "b"],
    ).save(path)
    return str(path)


class Echo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_student_loss_by_hand(tmp_path):
    path = selection_file(tmp_path, [7, 3, 3], [[0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])
    algo = create_algorithm("noisy_student", 2, 10, pseudo_labels=path)
    assert algo.unlabeled_pool(list(range(10))) == [7, 3, 3]  # the sampler draws the selected rows, copies included
    assert algo.views.labeled == ("strong",) and algo.views.unlabeled == ("strong",)
    x_l, u = [[2.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.5, 0.0]]
    positions = [0, 1, 2, 0]
    batch = Batch(
        labeled=BatchPart({"strong": torch.tensor(x_l)}, y=torch.tensor([0, 1])),
        unlabeled=BatchPart({"strong": torch.tensor(u, requires_grad=True)}, index=torch.tensor(positions)),
    )
    out = algo.step(Echo(), batch, StepContext(step=0, total_steps=10, num_classes=2))

    def log_softmax(row):
        z = math.log(sum(math.exp(v) for v in row))
        return [v - z for v in row]

    def ce_smooth(row, y, eps=0.1):  # label smoothing 0.1 over 2 classes
        target = [eps / 2 + (1 - eps) * (c == y) for c in range(2)]
        return -sum(t * lp for t, lp in zip(target, log_softmax(row), strict=True))

    targets = [[0.9, 0.1], [0.2, 0.8], [0.2, 0.8]]
    loss_l = (ce_smooth(x_l[0], 0) + ce_smooth(x_l[1], 1)) / 2
    loss_u = (
        sum(
            -sum(t * lp for t, lp in zip(targets[p], log_softmax(row), strict=True))
            for p, row in zip(positions, u, strict=True)
        )
        / 4
    )
    assert out.loss.item() == pytest.approx(loss_l + 2.0 * loss_u, rel=1e-5)  # lambda_u = B_u / B_l = 4 / 2
    # Gradient: d/dz of soft CE(z, t) is softmax(z) - t, scaled by lambda_u / B_u = 2 / 4 for each pool row; the
    # teacher's soft labels are constants.
    out.loss.backward()
    for i, (p, row) in enumerate(zip(positions, u, strict=True)):
        expected = [0.5 * (math.exp(lp) - t) for lp, t in zip(log_softmax(row), targets[p], strict=True)]
        assert batch.unlabeled["strong"].grad[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert algo.state_dict() == {}  # the selection file is config, not state: nothing in checkpoints
    with pytest.raises(ValueError, match="keeps no state"):
        algo.load_state_dict({"targets": torch.zeros(3, 2)})


def test_student_needs_a_matching_selection(tmp_path):
    with pytest.raises(ConfigError, match="pseudo_labels"):
        create_algorithm("noisy_student", 2, 10)
    path = selection_file(tmp_path, [1, 2], [[0.5, 0.5], [0.1, 0.9]])
    with pytest.raises(ConfigError, match="soft labels over 2 classes but the dataset has 3"):
        create_algorithm("noisy_student", 3, 10, pseudo_labels=path)
    with pytest.raises(ConfigError, match="strong, weak, none"):
        create_algorithm("noisy_student", 2, 10, pseudo_labels=path, augment="heavy")


def test_pipeline_stages_noise_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "ns"
    kwargs = dict(dataset="digits", labels_per_class=4, iterations=2, overrides=FAST)
    # Killed inside the second student, after its checkpoint at step 20.
    switch = KillSwitch(monkeypatch, lambda ctx, step: "iter-2" in str(ctx.folder) and step == 25)
    with pytest.raises(KeyboardInterrupt):
        noisy_student(out, **kwargs)
    assert (out / "iter-1" / "student" / "summary.json").exists()
    assert not (out / "iter-2" / "student" / "summary.json").exists()
    mtimes = {p: (out / p / "summary.json").stat().st_mtime_ns for p in ("teacher", "iter-1/student")}

    switch.steps = 0
    result = noisy_student(out, **kwargs)
    assert switch.steps == 10  # only the second student, from its checkpoint at step 20 to step 30
    assert all((out / p / "summary.json").stat().st_mtime_ns == t for p, t in mtimes.items())
    assert len(result.students) == 2 and len(result.accuracies()) == 3

    teacher_cfg = resolve_config(out / "teacher" / "config.yaml")
    assert teacher_cfg.algorithm.name == "supervised" and teacher_cfg.algorithm.options["label_smoothing"] == 0.1
    student_cfg = resolve_config(out / "iter-2" / "student" / "config.yaml")
    assert student_cfg.algorithm.name == "noisy_student" and student_cfg.model.dropout == 0.5
    assert student_cfg.algorithm.options["augment"] == "strong"
    assert student_cfg.algorithm.options["pseudo_labels"] == str(out / "iter-2" / "selection.safetensors")
    # the second iteration's teacher is the first student; its labels cover the whole training set
    manifest = PseudoLabels(out / "iter-2" / "pseudo-labels").manifest
    assert str(out / "iter-1" / "student") in json.dumps(manifest)
    # the selection holds only rows of the unlabeled pool (never validation rows), balanced across classes
    split = Split.load(out / "teacher" / "split.json")
    chosen = Selection.load(out / "iter-1" / "selection.safetensors")
    assert set(chosen.index.tolist()) <= set(split.unlabeled.tolist())
    assert not set(chosen.index.tolist()) & set(split.val.tolist())
    assert not set(chosen.index.tolist()) & set(split.labeled.tolist())  # U = the remaining train images
    # soft targets are the teacher's whole softmax on those rows, not a top-5 rebuild (digits has 10 classes)
    x = load_data(teacher_cfg.data).x_train[chosen.index]
    probs = torch.as_tensor(fewlabels.Run(out / "teacher").predict_proba(x)).float()
    assert torch.allclose(chosen.targets, probs, atol=1e-5)
    counts, kept = chosen.class_counts.tolist(), chosen.kept_before_balance.tolist()
    assert len({c for c in counts if c > 0}) == 1  # every class the teacher predicts confidently: the same count
    assert all(k == 0 for c, k in zip(counts, kept, strict=True) if c == 0)  # none to copy for the others
    report = (out / "report.md").read_text()
    assert "student 2" in report and "teacher (labels only)" in report

    with pytest.raises(ConfigError, match="threshold: 0.3 -> 0.5"):
        noisy_student(out, **kwargs, threshold=0.5)


def test_ablation_without_noise(tmp_path):
    out = tmp_path / "plain"
    noisy_student(out, dataset="digits", labels_per_class=4, iterations=1, overrides=FAST, noise=False)
    cfg = resolve_config(out / "iter-1" / "student" / "config.yaml")
    assert cfg.algorithm.options["augment"] == "none" and cfg.model.dropout == 0.0
    assert "noise off" in (out / "report.md").read_text()


def test_stochastic_depth_needs_a_residual_student(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="residual"):
        noisy_student(tmp_path / "x", dataset="digits", labels_per_class=4, overrides=FAST, drop_path=0.2)
    stages = stop_at_teacher(monkeypatch)
    with (
        pytest.warns(UserWarning, match="'cnn' has no stochastic depth: its model noise is dropout"),
        pytest.raises(Stop),
    ):
        noisy_student(tmp_path / "y", dataset="digits", labels_per_class=4, overrides=FAST)
    with pytest.warns(UserWarning, match="drop_path=0.2 is ignored: noise is off"), pytest.raises(Stop):
        noisy_student(tmp_path / "z", dataset="digits", overrides=FAST, noise=False, drop_path=0.2)
    assert len(stages) == 2


class Stop(Exception):
    """Raised instead of training a stage: the test only looks at the stage's config."""


def stop_at_teacher(monkeypatch) -> list:
    """Replace the pipeline's run_stage with one that records the config and stops before any training."""
    import fewlabels.pipelines.noisy_student as module

    seen = []

    def fake_run_stage(cfg, folder):
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(module, "run_stage", fake_run_stage)
    return seen


def test_student_smaller_than_the_teacher_is_refused(tmp_path, monkeypatch):
    with pytest.raises(
        ConfigError, match=r"'mlp' has 85,514 parameters, fewer than the teacher model 'cnn' with 103,466"
    ):
        noisy_student(tmp_path / "x", dataset="digits", teacher_model="cnn", student_model="mlp", overrides=FAST)
    assert not (tmp_path / "x").exists()  # refused before anything trains
    stages = stop_at_teacher(monkeypatch)
    with pytest.raises(Stop):  # an equal-or-larger student is fine
        noisy_student(tmp_path / "y", dataset="digits", teacher_model="mlp", student_model="cnn", overrides=FAST)
    assert stages[0].model.name == "mlp"


def test_unlabeled_pool_is_the_remaining_train_rows():
    from fewlabels.pipelines.noisy_student import unlabeled_pool

    split = Split(labeled=[1, 2], unlabeled=[0, 1, 2, 3, 4, 6], val=[5], seed=0)
    assert unlabeled_pool(split).tolist() == [0, 3, 4, 6]


def test_config_file_settings_survive_and_the_pipeline_defaults_fill_the_rest(tmp_path, monkeypatch):
    from fewlabels.cli import main

    stages = stop_at_teacher(monkeypatch)
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  dataset: digits\n  labels_per_class: 4\n  val_per_class: 3\ntrain:\n  seed: 2\n")
    with pytest.raises(Stop):
        main(["noisy-student", "--out", str(tmp_path / "a"), "--config", str(config), "--steps", "5"])
    d, t = stages[-1].data, stages[-1].train
    assert (d.dataset, d.labels_per_class, d.val_per_class, t.seed, t.steps) == ("digits", 4, 3, 2, 5)
    with pytest.raises(Stop):  # a flag wins over the file
        main(["noisy-student", "--out", str(tmp_path / "b"), "--config", str(config), "--labels-per-class", "6"])
    assert (stages[-1].data.labels_per_class, stages[-1].train.seed) == (6, 2)
    with pytest.raises(Stop):  # data.num_labels keeps the pipeline's labels_per_class default away
        main(["noisy-student", "--out", str(tmp_path / "c"), "--model", "cnn", "--num-labels", "30"])
    d = stages[-1].data
    assert (d.dataset, d.labels_per_class, d.num_labels, stages[-1].train.seed) == ("fashion-mnist", None, 30, 0)
    with pytest.raises(Stop):  # neither gives a value: the pipeline's defaults
        noisy_student(tmp_path / "d", teacher_model="cnn")
    d = stages[-1].data
    assert (d.dataset, d.labels_per_class, stages[-1].train.seed) == ("fashion-mnist", 10, 0)
    assert json.loads((tmp_path / "d" / "pipeline.json").read_text())["labels_per_class"] == 10


def test_user_algorithm_options_go_to_the_stages_that_take_them(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"'threshold' is not an option of any Noisy Student stage algorithm"):
        noisy_student(tmp_path / "x", dataset="digits", overrides={**FAST, "algorithm.threshold": 0.9})
    with pytest.raises(ConfigError, match="'augment' is set by the Noisy Student pipeline itself"):
        noisy_student(tmp_path / "x", dataset="digits", overrides={**FAST, "algorithm.augment": "weak"})
    assert not (tmp_path / "x").exists()
    out = tmp_path / "ns"
    options = {"algorithm.label_smoothing": 0.2, "algorithm.lambda_u": 3.0}
    short = {**FAST, "train.steps": 10, "train.eval_every": 10, **options}
    noisy_student(out, dataset="digits", labels_per_class=4, iterations=1, overrides=short, threshold=0.1)
    teacher = resolve_config(out / "teacher" / "config.yaml").algorithm
    student = resolve_config(out / "iter-1" / "student" / "config.yaml").algorithm
    assert (teacher.name, dict(teacher.options)) == ("supervised", {"label_smoothing": 0.2})
    assert student.name == "noisy_student"
    assert student.options["label_smoothing"] == 0.2 and student.options["lambda_u"] == 3.0
    assert student.options["augment"] == "strong"


def test_commands(tmp_path, capsys):
    from fewlabels.cli import main

    argv = ["noisy-student", "--out", str(tmp_path / "ns"), "--dataset", "digits", "--labels-per-class", "4"]
    argv += ["--iterations", "1", "--steps", "10", "--batch-size", "16", "--unlabeled-ratio", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "picky"), "--threshold", "0.999"]) == 2
    assert "lower --threshold or train the teacher longer" in capsys.readouterr().err
    assert main([*argv, "--threshold", "0.1"]) == 0, capsys.readouterr().err
    assert "student 1" in capsys.readouterr().out
    student = resolve_config(tmp_path / "ns" / "iter-1" / "student" / "config.yaml")
    assert student.train.steps == 10 and student.data.labels_per_class == 4
    assert main([*argv, "--threshold", "0.4"]) == 2
    assert "threshold: 0.1 -> 0.4" in capsys.readouterr().err

    teacher = tmp_path / "ns" / "teacher"
    code = main(["pseudo-label", str(teacher), "digits", "--out", str(tmp_path / "pl"), "--shard-size", "500"])
    assert code == 0, capsys.readouterr().err
    assert "1258 items in 3 shards" in capsys.readouterr().out  # the digits training split
    labels = PseudoLabels(tmp_path / "pl")
    assert labels.is_complete() and labels.dense().shape == (1258, 10)
