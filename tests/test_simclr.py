"""SimCLR: the NT-Xent loss by hand, the projection head, fine-tuning from a pretrained run (model.init_from), and
the pretrain -> fine-tune -> distill pipeline with its resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from engine_killer import KillSwitch
from safetensors.torch import load_file

from fewlabels.algorithms import Batch, BatchPart, StepContext, create_algorithm
from fewlabels.algorithms.simclr import nt_xent
from fewlabels.config import resolve_config
from fewlabels.engine.setup import init_from_run
from fewlabels.errors import ConfigError
from fewlabels.models import create_model
from fewlabels.pipelines.simclr import simclr

FAST = {
    "train.steps": 12,
    "train.batch_size": 8,
    "train.unlabeled_ratio": 4,
    "train.eval_every": 6,
    "train.log_every": 4,
    "train.checkpoint_every": 6,
    "train.progress": False,
}


def test_nt_xent_with_gathered_negatives_equals_the_global_batch():
    """Two ranks, each with half the batch as anchors and the whole batch as candidates: the mean of their losses is
    the one-process loss, and so is the gradient that DDP averages."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5, requires_grad=True)
    whole = nt_xent(z1, z2, 0.3)
    g1, g2 = torch.autograd.grad(whole, [z1, z2])
    halves = []
    for rank in range(2):
        rows = slice(4 * rank, 4 * rank + 4)
        gathered = iter([z1, z2])  # the differentiable all_gather's result: the global rows, in rank order

        def gather(t, gathered=gathered):
            return next(gathered)

        halves.append(nt_xent(z1[rows], z2[rows], 0.3, gather, offset=4 * rank))
    mean = (halves[0] + halves[1]) / 2
    assert mean.item() == pytest.approx(whole.item(), rel=1e-6)
    h1, h2 = torch.autograd.grad(mean, [z1, z2])
    assert torch.allclose(h1, g1, atol=1e-6) and torch.allclose(h2, g2, atol=1e-6)


def test_nt_xent_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    t = 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=-1).tolist()
    partner = [2, 3, 0, 1]
    total = 0.0
    for i in range(4):
        logits = {j: sum(a * b for a, b in zip(z[i], z[j], strict=True)) / t for j in range(4) if j != i}
        total += -logits[partner[i]] + math.log(sum(math.exp(v) for v in logits.values()))
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / 4, rel=1e-6)
    same = torch.randn(8, 4)
    assert nt_xent(same, same, 0.1) < nt_xent(same, torch.randn(8, 4), 0.1)  # aligned views cost less


def test_projection_head_is_trained_and_not_saved():
    model = create_model("cnn", num_classes=2, input_shape=(1, 16, 16), neck=2)
    algo = create_algorithm("simclr", 2, 8, projection_dim=16)
    algo.extend_model(model)
    assert algo.views.unlabeled == ("strong", "strong2")
    views = {"strong": torch.rand(8, 1, 16, 16), "strong2": torch.rand(8, 1, 16, 16)}
    batch = Batch(
        labeled=BatchPart({"none": torch.rand(2, 1, 16, 16)}, y=torch.tensor([0, 1])),
        unlabeled=BatchPart(views, index=torch.arange(8)),
    )
    out = algo.step(model, batch, StepContext(step=0, total_steps=10, num_classes=2))
    out.loss.backward()
    assert model.heads["projection"].weight.grad.abs().sum() > 0
    assert model.neck[1][0].weight.grad.abs().sum() > 0 and model.backbone[0].weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() == 0  # in the graph (for DDP) but not trained
    assert 0 <= out.logs["contrastive_accuracy"] <= 1


def test_init_from_copies_backbone_and_neck_but_not_the_classifier(tmp_path):
    from fewlabels.data import load_dataset
    from fewlabels.engine.run import save_model

    pretrained = create_model("cnn", num_classes=10, input_shape=(1, 8, 8), neck=2)
    save_model(tmp_path, pretrained, load_dataset("digits"), resolve_config(**{"model.neck": 2}))
    fresh = create_model("cnn", num_classes=10, input_shape=(1, 8, 8), neck=1)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    copied = init_from_run(fresh, str(tmp_path))
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert any(k.startswith("neck.0.") for k in copied) and not any(k.startswith("neck.1.") for k in copied)
    assert not any(k.startswith("classifier.") for k in copied)
    for k, v in fresh.state_dict().items():
        expected = saved[k] if k in copied else before[k]
        assert torch.equal(v, expected), k
    other = create_model("mlp", num_classes=10, input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="no backbone weight"):
        init_from_run(other, str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        init_from_run(fresh, str(tmp_path / "missing"))


def test_pipeline_binary_task_resume_and_report(tmp_path, monkeypatch):
    out = tmp_path / "simclr"
    kwargs = dict(dataset="digits", classes=[3, 8], labels_per_class=5, overrides=FAST)
    switch = KillSwitch(monkeypatch, lambda ctx, step: ctx.cfg.algorithm.name == "distill" and step == 8)
    with pytest.raises(KeyboardInterrupt):
        simclr(out, **kwargs)
    switch.steps = 0
    result = simclr(out, **kwargs)
    assert switch.steps == 6  # only the distillation stage, from its checkpoint at step 6
    finetune = resolve_config(out / "finetune" / "config.yaml")
    assert finetune.model.init_from == str(out / "pretrain") and finetune.model.neck == 1
    assert resolve_config(out / "pretrain" / "config.yaml").model.neck == 2
    assert resolve_config(out / "distill" / "config.yaml").algorithm.options["teacher"] == str(out / "finetune")
    report = (out / "report.md").read_text()
    assert "test ROC AUC" in report
    rows = {"baseline": "labels only", "finetune": "fine-tuned from the projection layer", "distill": "distilled"}
    for stage, name in rows.items():
        s = result.runs[stage].summary
        assert s["num_labels"] == 10 and s["steps"] == 12
        assert f"| {s['test_auc']:.4f} | {100 * s['test_accuracy']:.2f} |" in next(
            line for line in report.splitlines() if line.startswith(f"| {name}")
        )  # each stage's row shows its own run's figures
    # The pretrained encoder is judged by a linear probe on the labels (kept across the resume): 3 and 8 are
    # told apart from 10 labels even by a briefly trained encoder.
    assert result.probe["test_auc"] > 0.6 and f"| {result.probe['test_auc']:.4f} |" in report
    assert json.loads((out / "pretrain-probe.json").read_text()) == result.probe
    with pytest.raises(ConfigError, match="temperature: 0.5 -> 0.2"):
        simclr(out, **kwargs, temperature=0.2)


def test_command(tmp_path, capsys):
    from fewlabels.cli import main

    argv = ["simclr", "--out", str(tmp_path / "s"), "--dataset", "digits", "--set", "data.classes=[0,1]"]
    argv += ["--labels-per-class", "4", "--steps", "6", "--batch-size", "8", "--unlabeled-ratio", "2", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "fine-tuned from the projection layer" in capsys.readouterr().out
    out = tmp_path / "s"
    assert resolve_config(out / "finetune" / "config.yaml").model.init_from == str(out / "pretrain")
    for stage in ("baseline", "pretrain", "finetune", "distill"):
        assert json.loads((out / stage / "summary.json").read_text())["steps"] == 6, stage
    assert (out / "report.md").exists()


class PlannedRun:
    """Stands in for a trained stage: the tests below look only at the configs the pipeline asks for."""

    def __init__(self, cfg, folder) -> None:
        self.config, self.path, self.summary = cfg, Path(folder), {}

    def model_info(self, which: str = "model") -> dict:
        return {"model": self.config.model.name or "cnn"}


def planned_stages(monkeypatch) -> dict:
    """Replace the pipeline's training with a record of each stage's config, by stage folder name."""
    import fewlabels.pipelines.simclr as module

    configs: dict = {}

    def fake_run_stage(cfg, folder):
        configs[Path(folder).name] = cfg
        return PlannedRun(cfg, folder)

    monkeypatch.setattr(module, "run_stage", fake_run_stage)
    monkeypatch.setattr(module, "linear_probe", lambda run: {})
    return configs


def test_temperature_default_and_finetuning_without_weight_decay(tmp_path, monkeypatch):
    from fewlabels.cli import build_parser

    assert create_algorithm("simclr", 2, 8).temperature == 0.5  # SimCLR's CIFAR value, for small batches
    assert build_parser().parse_args(["simclr", "--out", "x"]).temperature == 0.5
    configs = planned_stages(monkeypatch)
    simclr(tmp_path / "a", dataset="digits", overrides=FAST)
    assert configs["pretrain"].algorithm.options == {"temperature": 0.5}
    assert configs["finetune"].optim.weight_decay == 0.0  # SimCLRv2 fine-tunes without weight decay
    assert configs["baseline"].optim.weight_decay == 5e-4 and configs["distill"].optim.weight_decay == 5e-4
    simclr(tmp_path / "b", dataset="digits", overrides={**FAST, "optim.weight_decay": 1e-4})
    assert configs["finetune"].optim.weight_decay == 1e-4  # the user's choice is kept
    config = tmp_path / "c.yaml"
    config.write_text("optim:\n  weight_decay: 0.0005\n")
    simclr(tmp_path / "c", dataset="digits", config=config)
    assert configs["finetune"].optim.weight_decay == 5e-4


def test_user_algorithm_options_go_to_the_stages_that_take_them(tmp_path, monkeypatch):
    configs = planned_stages(monkeypatch)
    for bad, message in [
        ("threshold", r"'threshold' is not an option of any SimCLR stage algorithm \(supervised, simclr, distill\)"),
        ("teacher", "'teacher' is set by the SimCLR pipeline itself"),
    ]:
        with pytest.raises(ConfigError, match=message):
            simclr(tmp_path / "bad", dataset="digits", overrides={**FAST, f"algorithm.{bad}": "x"})
    assert not configs and not (tmp_path / "bad").exists()  # refused before anything trains
    options = {
        "algorithm.projection_dim": 32,
        "algorithm.label_smoothing": 0.1,
        "algorithm.mode": "consistent",
        "algorithm.temperature": 2.0,
    }
    simclr(tmp_path / "a", dataset="digits", overrides={**FAST, **options})
    algo = {stage: (cfg.algorithm.name, dict(cfg.algorithm.options)) for stage, cfg in configs.items()}
    assert algo["pretrain"] == ("simclr", {"temperature": 0.5, "projection_dim": 32})
    assert algo["baseline"] == algo["finetune"] == ("supervised", {"label_smoothing": 0.1})
    teacher = str(tmp_path / "a" / "finetune")
    assert algo["distill"] == ("distill", {"mode": "consistent", "temperature": 2.0, "teacher": teacher})


def test_command_keeps_the_config_file_task(tmp_path, monkeypatch):
    from fewlabels.cli import main

    configs = planned_stages(monkeypatch)
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  dataset: digits\n  labels_per_class: 4\n  classes: [0, 1]\ntrain:\n  seed: 3\n")
    assert main(["simclr", "--out", str(tmp_path / "a"), "--config", str(config), "--no-progress"]) == 0
    for cfg in configs.values():
        d = cfg.data
        assert (d.dataset, d.labels_per_class, d.classes, cfg.train.seed) == ("digits", 4, [0, 1], 3)
    settings = json.loads((tmp_path / "a" / "pipeline.json").read_text())
    assert (settings["dataset"], settings["labels_per_class"], settings["seed"]) == ("digits", 4, 3)
    # a flag wins over the file; an argument for one of labels_per_class / num_labels replaces the other
    assert main(["simclr", "--out", str(tmp_path / "b"), "--config", str(config), "--num-labels", "6"]) == 0
    d = configs["finetune"].data
    assert (d.labels_per_class, d.num_labels, configs["finetune"].train.seed) == (None, 6, 3)
