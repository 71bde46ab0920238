"""The training loop: run folder, checkpoints and resume, NaN handling, EMA, schedule, budget, config."""

from __future__ import annotations

import json
import math
import statistics

import numpy as np
import pytest
import torch
from engine_killer import kill_at_step
from safetensors.torch import load_file
from torch import nn

import fewlabels
from fewlabels.config import Config, OptimConfig, parse_duration, resolve_config
from fewlabels.engine import checkpoint as ckpt
from fewlabels.engine import trainer
from fewlabels.engine.budget import BudgetPlanner
from fewlabels.engine.ema import ModelEMA
from fewlabels.engine.schedule import lr_factor, parameter_groups
from fewlabels.engine.trainer import optimizer_step
from fewlabels.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from fewlabels.hardware import hardware_line

TINY = {
    "data.dataset": "digits",
    "data.labels_per_class": 2,
    "train.steps": 12,
    "train.batch_size": 16,
    "train.unlabeled_ratio": 2,
    "train.eval_every": 6,
    "train.log_every": 4,
    "train.checkpoint_every": 6,
    "train.progress": False,
}


def tiny(tmp_path, name="run", **extra):
    return {**TINY, "out": str(tmp_path / name), **extra}


def train_killed_at_step_9(monkeypatch, cfg: dict) -> None:
    """Train `cfg` until the engine is killed before step 9 (after the evaluation and checkpoint at step 6)."""
    switch = kill_at_step(monkeypatch, 9)
    with pytest.raises(KeyboardInterrupt):
        fewlabels.train(**cfg)
    switch.remove()


def test_run_folder_holds_everything_a_user_needs(tmp_path):
    run = fewlabels.train(**tiny(tmp_path, **{"algorithm.name": "fixmatch", "algorithm.threshold": 0.1}))
    files = {p.name for p in run.path.iterdir()}
    assert {
        "config.yaml",
        "split.json",
        "metrics.jsonl",
        "summary.json",
        "model.safetensors",
        "model.json",
    } <= files
    assert {"best.safetensors", "best.json", "checkpoint.json", "checkpoint-12.safetensors"} <= files
    s = run.summary
    for key in (
        "test_accuracy",
        "test_accuracy_median_last",
        "val_accuracy",
        "steps",
        "wall_seconds",
        "num_labels",
        "algorithm",
        "dataset",
        "seed",
    ):
        assert s[key] is not None, key
    assert s["steps"] == 12 and s["num_labels"] == 20 and s["algorithm"] == "fixmatch"
    assert 0.0 <= s["test_accuracy"] <= 1.0
    # The machine it ran on: a wall-clock budget's step count depends on it.
    assert s["device"] == "cpu" and s["hardware"] == hardware_line() and "torch threads, no GPU" in s["hardware"]
    rows = run.metrics()
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if r.get("kind") == "eval"]
    assert [r["step"] for r in train_rows] == [4, 8, 12]
    assert [r["step"] for r in eval_rows] == [6, 12]
    assert {"mask", "data_time", "step_time", "pseudo_accuracy", "pseudo_histogram"} <= set(train_rows[-1])
    assert len(train_rows[-1]["pseudo_histogram"]) == 10
    # The reported figures come from the final EMA model and the history of test evaluations.
    history = [r["test_accuracy"] for r in eval_rows]
    assert s["test_accuracy_median_last"] == pytest.approx(statistics.median(history))
    assert s["test_accuracy"] == pytest.approx(history[-1])
    assert resolve_config(run.path / "config.yaml").algorithm.name == "fixmatch"
    probs = run.predict_proba(torch.zeros(3, 1, 8, 8, dtype=torch.uint8))
    assert probs.shape == (3, 10) and torch.allclose(torch.tensor(probs.sum(1)), torch.ones(3), atol=1e-5)


def test_same_seed_same_result_different_seed_different(tmp_path):
    a = fewlabels.train(**tiny(tmp_path, "a"))
    b = fewlabels.train(**tiny(tmp_path, "b"))
    c = fewlabels.train(**tiny(tmp_path, "c", **{"train.seed": 1}))
    wa, wb, wc = (load_file(str(r.path / "model.safetensors")) for r in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert json.loads((a.path / "split.json").read_text()) == json.loads((b.path / "split.json").read_text())


# Algorithm state of each kind: FlexMatch's per-sample memory, Temporal Ensembling's ensemble, ReMixMatch's
# alignment buffer and rotation head, Mean Teacher's EMA teacher, VAT's random directions (global RNG).
@pytest.mark.parametrize("algorithm", ["flexmatch", "temporal_ensembling", "remixmatch", "mean_teacher", "vat"])
def test_killed_run_resumes_to_the_identical_model(tmp_path, monkeypatch, algorithm):
    full = fewlabels.train(**tiny(tmp_path, "full", **{"algorithm.name": algorithm}))
    cfg = tiny(tmp_path, "killed", **{"algorithm.name": algorithm})
    train_killed_at_step_9(monkeypatch, cfg)  # after the checkpoint at step 6
    assert json.loads((tmp_path / "killed" / "checkpoint.json").read_text())["state"]
    with pytest.raises(ConfigError, match="--resume"):
        fewlabels.train(**cfg)  # refuses to overwrite a run
    resumed = fewlabels.train(**cfg, resume=True)
    wa, wb = (
        load_file(str(full.path / "model.safetensors")),
        load_file(str(resumed.path / "model.safetensors")),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    steps = [r["step"] for r in resumed.metrics() if "loss" in r]
    assert steps == [4, 8, 12]  # rows after the checkpoint were replaced, not duplicated


def test_resume_refuses_a_different_config(tmp_path):
    cfg = tiny(tmp_path)
    fewlabels.train(**cfg)
    with pytest.raises(ConfigError, match=r"train.steps: 12 -> 20"):
        fewlabels.train(**{**cfg, "train.steps": 20}, resume=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from fewlabels.algorithms.supervised import Supervised

    real = Supervised.step

    def poisoned(self, model, batch, ctx):
        out = real(self, model, batch, ctx)
        if ctx.step == 8:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(Supervised, "step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 8.*step 6"):
        fewlabels.train(**tiny(tmp_path, **{"algorithm.name": "supervised"}))
    state = ckpt.load_checkpoint(tmp_path / "run")
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)


def test_nan_weights_from_a_finite_loss_never_replace_the_last_good_checkpoint(tmp_path, monkeypatch):
    from fewlabels.algorithms.supervised import Supervised

    real = Supervised.step

    def overflowing(self, model, batch, ctx):
        out = real(self, model, batch, ctx)
        if ctx.step == 11:  # the loss stays finite (sqrt(0) = 0) but every gradient is inf * 0 = NaN
            out.loss = out.loss + torch.sqrt(sum((p * 0).sum() for p in model.parameters()))
        return out

    monkeypatch.setattr(Supervised, "step", overflowing)
    with pytest.raises(TrainingDiverged, match=r"weights became NaN or infinite by step 12.*checkpoint \(step 6\)"):
        fewlabels.train(**tiny(tmp_path, **{"algorithm.name": "supervised"}))
    state = ckpt.load_checkpoint(tmp_path / "run")
    assert state["step"] == 6
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)
    assert not (tmp_path / "run" / "model.safetensors").exists()  # no final model made of NaNs


def test_best_model_records_its_step_and_survives_a_resume(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, **{"algorithm.name": "supervised"})
    train_killed_at_step_9(monkeypatch, cfg)
    best = json.loads((tmp_path / "run" / "best.json").read_text())
    evals = [r for r in fewlabels.Run(tmp_path / "run").metrics() if r.get("kind") == "eval"]
    assert best["step"] == 6 and best["val_accuracy"] == pytest.approx(evals[0]["val_accuracy"])
    assert ckpt.load_checkpoint(tmp_path / "run")["eval_seconds"] > 0  # the budget planner's evaluation share
    # A best model saved after the checkpoint (here: a score no evaluation can reach) is not replaced by a worse one.
    (tmp_path / "run" / "best.json").write_text(json.dumps({**best, "val_accuracy": 1.5}))
    fewlabels.train(**cfg, resume=True)
    assert json.loads((tmp_path / "run" / "best.json").read_text())["val_accuracy"] == 1.5


def test_resume_without_the_split_file_is_refused(tmp_path, monkeypatch):
    train_killed_at_step_9(monkeypatch, tiny(tmp_path))
    (tmp_path / "run" / "split.json").unlink()
    with pytest.raises(DataError, match=r"split.json is missing.*restore the file, or train into a new --out"):
        fewlabels.train(**tiny(tmp_path), resume=True)


def test_evaluate_leaves_out_validation_when_the_training_data_changed(tmp_path):
    rng = np.random.default_rng(0)
    y_test = rng.integers(0, 2, 20)
    x_test = rng.normal(size=(20, 4)).astype(np.float32) + 3 * y_test[:, None]

    def save(n):
        y = rng.integers(0, 2, n)
        x = rng.normal(size=(n, 4)).astype(np.float32) + 3 * y[:, None]
        y[n // 2 :] = -1
        np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=y_test)

    save(120)
    cfg = {**tiny(tmp_path), "data.dataset": str(tmp_path / "d.npz"), "data.labels_per_class": None}
    run = fewlabels.train(**cfg)
    first = fewlabels.evaluate(run)
    assert first["val_accuracy"] == pytest.approx(run.summary["val_accuracy"])
    save(150)  # rows added: the split's validation indices now point at other rows
    with pytest.warns(UserWarning, match="validation accuracy is not reported: .*120 training rows then, 150 now"):
        result = fewlabels.evaluate(run)
    assert "val_accuracy" not in result and result["test_accuracy"] == first["test_accuracy"]  # same test set


def test_metrics_skip_a_line_cut_off_by_a_kill(tmp_path):
    run = fewlabels.train(**tiny(tmp_path))
    rows = run.metrics()
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "lo')
    assert run.metrics() == rows


def test_ema_warmup_follows_the_weights_early():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = ModelEMA(model, decay=0.999)
    expected = 0.0
    for t in range(5):
        with torch.no_grad():
            model.weight.fill_(float(t + 1))
        decay = (1 + t) / (10 + t)  # 0.1, 0.18, 0.25, ...: far below 0.999 at first
        expected = decay * expected + (1 - decay) * (t + 1)
        ema.update(model)
    assert ema.module.weight.item() == pytest.approx(expected)
    assert ema.current_decay() == pytest.approx(6 / 15)
    ema.updates = 10**6
    assert ema.current_decay() == 0.999


def test_ema_copies_batchnorm_buffers():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(model)
    model(torch.randn(8, 3) * 5 + 2)
    ema.update(model)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)


def test_mean_teacher_keeps_its_own_batchnorm_statistics(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEMA(model)
    with torch.no_grad():
        ema.module.train()(torch.randn(8, 3) - 4)  # the teacher's own train-mode pass
    own = ema.module[1].running_mean.clone()
    model(torch.randn(8, 3) * 5 + 2)
    ema.update(model, buffers=False)
    assert torch.equal(ema.module[1].running_mean, own) and not torch.equal(own, model[1].running_mean)
    # In the engine, the teacher (the EMA model, which is evaluated and saved) keeps the statistics of its passes.
    fewlabels.train(**tiny(tmp_path, **{"algorithm.name": "mean_teacher"}))
    state = ckpt.load_checkpoint(tmp_path / "run")
    keys = [k for k in state["model"] if k.endswith("running_mean")]
    assert keys and all(not torch.equal(state["model"][k], state["ema"][k]) for k in keys)


def test_cosine_schedule_values():
    cfg = OptimConfig()
    assert lr_factor(0, 1000, cfg) == 1.0
    assert lr_factor(500, 1000, cfg) == pytest.approx(math.cos(7 * math.pi * 500 / 16000))
    assert lr_factor(1000, 1000, cfg) == pytest.approx(math.cos(7 * math.pi / 16))
    warm = OptimConfig(warmup_steps=10)
    assert lr_factor(4, 1000, warm) == pytest.approx(0.5)
    assert lr_factor(10, 1000, warm) == 1.0


def test_no_weight_decay_on_batchnorm_or_bias():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {4, 2}
    assert len(no_decay["params"]) == 4  # conv bias, BN weight and bias, linear bias


def test_budget_fixes_the_step_count(tmp_path):
    cfg = tiny(tmp_path, **{"train.steps": None, "train.budget": "10s", "algorithm.name": "supervised"})
    run = fewlabels.train(**cfg)
    s = run.summary
    assert s["steps"] >= BudgetPlanner.calibration_steps
    state = ckpt.load_checkpoint(run.path)
    assert state["total_steps"] == s["steps"]  # the run ended exactly where the schedule did
    # The schedule was sized to the budget: most of the 10 s used, and not far past it (loose: a shared CPU).
    assert 5.0 <= s["wall_seconds"] <= 20.0


def test_budget_plan_by_hand():
    planner = BudgetPlanner(seconds=100.0, eval_every=10)
    # The first steps this planner sees (warm-up, also right after a resume) are ignored, whatever the global step.
    for seen in range(1, BudgetPlanner.calibration_steps + 1):
        assert not planner.calibrated
        planner.add_step_time(0.1 if seen > BudgetPlanner.warmup_steps else 5.0)
    assert planner.calibrated
    # 100 s - 10 s elapsed - 1 s final evaluation = 89 s left; 0.1 s per step + 1 s / 10 steps of evaluation.
    assert planner.plan(step=19, elapsed=10.0, eval_seconds=1.0) == 19 + int(0.97 * 89 / 0.2)
    assert planner.plan(step=19, elapsed=200.0, eval_seconds=1.0) == 19  # over budget: stop now


def test_checkpoint_round_trip_of_nested_state(tmp_path):
    state = {"step": 3, "a": {"w": torch.arange(4.0), "nested": [torch.ones(2), 5, "x"]}, "b": None}
    ckpt.save_checkpoint(tmp_path, state)
    back = ckpt.load_checkpoint(tmp_path)
    assert back["step"] == 3 and back["b"] is None
    assert torch.equal(back["a"]["w"], torch.arange(4.0)) and back["a"]["nested"][1:] == [5, "x"]
    ckpt.save_checkpoint(tmp_path, {**state, "step": 4})
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["checkpoint-4.safetensors"]


def test_config_sources_and_errors(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("data: {dataset: mnist1d}\nalgorithm: {name: fixmatch, threshold: 0.9}\n")
    cfg = resolve_config(yaml_file, **{"algorithm.threshold": 0.8, "train.steps": "50"})
    assert cfg.data.dataset == "mnist1d" and cfg.algorithm.options == {"threshold": 0.8}
    assert cfg.train.steps == 50
    with pytest.raises(ConfigError, match="labels_per_class"):
        Config().override(**{"data.label_per_class": 4})
    with pytest.raises(ConfigError, match="must be a int"):
        Config().override(**{"train.steps": "many"})
    assert parse_duration("15m") == 900 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    with pytest.raises(ConfigError, match="15m"):
        parse_duration("soon")
    changed = Config().override(**{"algorithm.name": "softmatch"})
    assert changed.algorithm.options == {}


def test_unknown_names_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="fixmatch"):
        fewlabels.train(**tiny(tmp_path, **{"algorithm.name": "fixmach"}))
    with pytest.raises(ConfigError, match="digits"):
        fewlabels.train(**tiny(tmp_path, "b", **{"data.dataset": "digitz"}))
    with pytest.raises(ConfigError, match="cnn"):
        fewlabels.train(**tiny(tmp_path, "c", **{"model.name": "cnnn"}))


def test_run_stage_trains_once_resumes_and_refuses_other_configs(tmp_path, monkeypatch):
    from fewlabels.engine.stage import run_stage

    cfg = resolve_config(**{k: v for k, v in tiny(tmp_path).items() if k != "out"})
    folder = tmp_path / "stage"
    first = run_stage(cfg, folder)
    weights = load_file(str(first.path / "model.safetensors"))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished stage must not train again")

    monkeypatch.setattr(trainer, "train", no_training)
    again = run_stage(cfg, folder)  # finished with the same config: returned as is
    assert again.summary == first.summary
    with pytest.raises(ConfigError, match="train.seed: 0 -> 1"):
        run_stage(cfg.override(**{"train.seed": 1}), folder)
    monkeypatch.undo()

    (folder / "summary.json").unlink()  # as if killed after its last checkpoint
    resumed = run_stage(cfg, folder)
    assert all(torch.equal(weights[k], v) for k, v in load_file(str(resumed.path / "model.safetensors")).items())
    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a run folder"):
        run_stage(cfg, stranger)
    assert (stranger / "notes.txt").exists()


def test_pipeline_settings_ignore_display_keys_and_name_a_changed_setting(tmp_path):
    from fewlabels.engine.stage import check_pipeline_settings

    check_pipeline_settings(tmp_path / "p", {"a": 1, "config": Config().to_dict()}, "test")
    quiet = Config().override(**{"train.progress": False, "train.log_every": 7, "data.data_root": "/x"})
    check_pipeline_settings(tmp_path / "p", {"a": 1, "config": quiet.to_dict()}, "test")  # as a resume: fine
    other = Config().override(**{"train.steps": 77})
    with pytest.raises(ConfigError, match=r"other settings \(the training config: train.steps: .* -> 77\)"):
        check_pipeline_settings(tmp_path / "p", {"a": 1, "config": other.to_dict()}, "test")
    with pytest.raises(ConfigError, match=r"other settings \(a: 1 -> 2\)"):
        check_pipeline_settings(tmp_path / "p", {"a": 2, "config": Config().to_dict()}, "test")


def test_class_subset_makes_a_binary_task_with_roc_auc(tmp_path):
    run = fewlabels.train(**tiny(tmp_path, **{"data.classes": [3, 8], "data.labels_per_class": 5}))
    s = run.summary
    assert run.classes == ["3", "8"] and s["num_labels"] == 10
    assert 0.0 <= s["test_auc"] <= 1.0 and "val_auc" in s
    result = fewlabels.evaluate(run)
    assert result["test_auc"] == pytest.approx(s["test_auc"])
    assert set(result["per_class_test_accuracy"]) == {"3", "8"}
    with pytest.raises(ConfigError, match="did you mean"):
        fewlabels.train(**tiny(tmp_path, "bad", **{"data.classes": ["3", "x8"]}))


def test_binary_roc_auc_scores_class_one():
    """AUC's orientation: p(class 1) is the score, so a model that ranks class 1 first gets 1, the reverse 0."""
    from fewlabels.engine.evaluate import binary_roc_auc

    y = torch.tensor([0, 0, 1, 1, 0, 1])
    margin = torch.tensor([-2.0, -1.0, 1.5, 3.0, 0.5, 0.7])  # every class-1 row above every class-0 row
    logits = torch.stack([torch.zeros(6), margin], dim=1)
    assert binary_roc_auc(logits, y) == pytest.approx(1.0)
    assert binary_roc_auc(logits.flip(1), y) == pytest.approx(0.0)
    noisy = torch.stack([torch.zeros(6), torch.tensor([0.3, -1.0, 1.5, -0.2, 2.0, 0.7])], dim=1)
    assert binary_roc_auc(noisy, y) == pytest.approx(5 / 9)  # 5 of the 9 (class 1, class 0) pairs ranked right
    assert binary_roc_auc(logits, torch.ones(6, dtype=torch.long)) is None


def test_optimizer_step_reports_a_step_the_fp16_scaler_skipped():
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=16.0)
    before = model.weight.detach().clone()
    overflow = model(torch.tensor([[float("inf"), 1.0]])).sum()  # inf gradients: the scaler must skip
    assert optimizer_step(overflow, opt, model, scaler, grad_clip=1.0) is False
    assert torch.equal(model.weight, before) and scaler.get_scale() == 8.0
    assert optimizer_step(model(torch.ones(1, 2)).sum(), opt, model, scaler) is True
    assert not torch.equal(model.weight, before)
    # Without a scaler every step is applied; clipping bounds the update to lr * grad_clip.
    before = nn.utils.parameters_to_vector(model.parameters()).detach().clone()
    assert optimizer_step(model(torch.full((1, 2), 100.0)).sum(), opt, model, None, grad_clip=1.0) is True
    step = nn.utils.parameters_to_vector(model.parameters()).detach() - before
    assert step.norm().item() == pytest.approx(0.1, rel=1e-4)  # the gradient norm (141) was clipped to 1


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    ckpt.save_checkpoint(tmp_path, {"step": 2, "w": torch.ones(3)})
    tensors = next(tmp_path.glob("checkpoint-*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:20])  # cut short
    with pytest.raises(CheckpointError, match="cannot read .*checkpoint-2.safetensors.*new --out"):
        ckpt.load_checkpoint(tmp_path)
    (tmp_path / ckpt.META).write_text('{"tensors": "checkpoint-2.safe')  # cut short
    with pytest.raises(CheckpointError, match="checkpoint.json is unreadable.*new --out"):
        ckpt.load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="checkpoint.json is unreadable"):
        ckpt.has_checkpoint(tmp_path)


def test_trim_metrics_drops_later_rows_and_a_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "loss": 0.5}\n{"step": 15, "lo')
    trainer._trim_metrics(path, 10)
    assert path.read_text() == '{"step": 5, "loss": 1.0}\n{"step": 10, "loss": 0.5}\n'


def test_run_hash_ignores_where_data_is_read_from_and_logging_intervals():
    base = resolve_config(**{"data.dataset": "digits"})
    same = base.override(
        **{"data.download": True, "data.data_root": "/elsewhere", "train.log_every": 7, "train.checkpoint_every": 3}
    )
    assert same.run_hash() == base.run_hash()
    for key, value in (("optim.lr", 0.01), ("train.eval_every", 11), ("data.strict", True), ("train.seed", 1)):
        assert base.override(**{key: value}).run_hash() != base.run_hash(), key


def test_fresh_run_clears_what_a_run_killed_before_its_first_checkpoint_left(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for stale in ("best.json", "best.safetensors", "metrics.jsonl"):
        (folder / stale).write_text("from an older, killed run")
    # No validation split: this run saves no best model of its own.
    run = fewlabels.train(**tiny(tmp_path, **{"algorithm.name": "supervised", "data.val_per_class": 0}))
    assert not (run.path / "best.json").exists() and not (run.path / "best.safetensors").exists()
    assert "older" not in (run.path / "metrics.jsonl").read_text()


def test_amp_dtype_setting_is_checked_and_picks_the_autocast_precision(tmp_path):
    from fewlabels.engine.distributed import DistInfo
    from fewlabels.engine.setup import amp_dtype, build_context

    assert resolve_config(**{"train.amp_dtype": "fp16"}).train.amp_dtype == "fp16"
    with pytest.raises(ConfigError, match="train.amp_dtype must be one of auto, bf16, fp16, got 'fp8'"):
        resolve_config(**{"train.amp_dtype": "fp8"})
    assert amp_dtype("bf16", torch.device("cuda", 0)) == torch.bfloat16  # no GPU needed for an explicit choice
    assert amp_dtype("fp16", torch.device("cuda", 0)) == torch.float16
    # On the CPU autocast is off whatever the setting: no autocast dtype, no grad scaler.
    cfg = resolve_config(**tiny(tmp_path, **{"train.amp_dtype": "fp16", "train.device": "cpu"}))
    ctx = build_context(cfg, DistInfo(), resume=False)
    assert ctx.autocast_dtype is None and ctx.scaler is None
