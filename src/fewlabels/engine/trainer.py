"""The one training loop behind the CLI, the Python API, the estimator and every pipeline stage."""

from __future__ import annotations

import json
import math
import statistics
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fewlabels.algorithms import Batch, BatchPart, StepContext
from fewlabels.algorithms.classic import is_classic, resolve_algorithm_name
from fewlabels.config import Config, parse_duration, resolve_config
from fewlabels.data import DataBundle
from fewlabels.engine import checkpoint as ckpt
from fewlabels.engine.budget import BudgetPlanner
from fewlabels.engine.classic import fit_classic
from fewlabels.engine.distributed import (
    DistInfo,
    all_gather_cat,
    all_gather_cat_grad,
    all_ranks_agree,
    broadcast_int,
    cleanup,
    init_distributed,
    rank_offset,
)
from fewlabels.engine.evaluate import (
    accuracy,
    binary_roc_auc,
    confusion_matrix,
    per_class_accuracy,
    predict_logits,
)
from fewlabels.engine.monitor import MetricsLogger, PseudoMonitor
from fewlabels.engine.run import Run, save_model
from fewlabels.engine.schedule import lr_factor, set_lr
from fewlabels.engine.setup import Context, build_context, context_state, restore_context
from fewlabels.errors import ConfigError, TrainingDiverged
from fewlabels.hardware import hardware_line
from fewlabels.io import atomic_write_text


def train(config: Config | dict | str | Path | None = None, *, data: DataBundle | None = None, **overrides: Any) -> Run:
    """Train a model as `config` (a Config, a nested dict or a YAML path, plus dotted overrides) says; return the Run.

    With `resume=True` (given as an override) a run folder holding a checkpoint continues from it. `data` trains on
    an in-memory DataBundle instead of loading `config.data.dataset` (the scikit-learn estimator's path); the split,
    labels-per-class and validation settings of `config.data` still apply to it, and a resume must pass the same
    data (the saved split's checksum is checked against it). A classic baseline (`label_spreading`,
    `label_propagation`, `self_training`) is one scikit-learn fit on the same split instead of the loop
    (`fewlabels.algorithms.classic.fit_classic`).
    """
    resume = bool(overrides.pop("resume", False))
    cfg = absolute_paths(resolve_config(config, **overrides))
    if is_classic(resolve_algorithm_name(cfg.algorithm.name)):  # unknown names raise, suggesting from both kinds
        return fit_classic(cfg, data, resume=resume)
    info = init_distributed(cfg.train.device)
    try:
        ctx = build_context(cfg, info, resume, bundle=data)
        return _loop(ctx, resume)
    finally:
        cleanup(info)


def absolute_paths(cfg: Config) -> Config:
    """`cfg` with its user data path, data root and init_from run made absolute, so the run folder's config.yaml
    names the same files from any working directory (evaluate, resume, distill from elsewhere). Built-in dataset
    names and paths that do not exist (the loader then names the problem) are left as they are."""
    from fewlabels.data import DATASETS

    changes: dict[str, str] = {}
    d = cfg.data
    try:
        DATASETS.get(d.dataset)  # a built-in name wins over a same-named folder, as in load_dataset
    except ConfigError:
        if Path(d.dataset).expanduser().exists():
            changes["data.dataset"] = str(Path(d.dataset).expanduser().resolve())
    for key, value in (("data.data_root", d.data_root), ("model.init_from", cfg.model.init_from)):
        if value and Path(value).expanduser().exists():
            changes[key] = str(Path(value).expanduser().resolve())
    return cfg.override(**changes) if changes else cfg


def _local(positions: Tensor, info: DistInfo) -> Tensor:
    """This rank's contiguous slice of a global batch."""
    size = len(positions) // info.world_size
    return positions[info.rank * size : (info.rank + 1) * size]


def _next_batch(ctx: Context) -> Batch:
    algo_views = ctx.algorithm.views
    view = (lambda x, v: ctx.augmenter(x, v)) if ctx.cfg.data.augment else (lambda x, v: ctx.augmenter(x, "none"))
    channels_last = ctx.cfg.train.channels_last and ctx.bundle.modality == "image"

    def views(x: Tensor, names: tuple[str, ...]) -> dict[str, Tensor]:
        out = {name: view(x, name) for name in names}
        if channels_last:
            out = {k: v.contiguous(memory_format=torch.channels_last) for k, v in out.items()}
        return out

    idx_l = ctx.labeled.pool[_local(ctx.labeled.next(), ctx.info)].to(ctx.device)
    labeled = BatchPart(views(ctx.x_train[idx_l], algo_views.labeled), y=ctx.y_train[idx_l])
    unlabeled = None
    if ctx.unlabeled is not None:
        pos_u = _local(ctx.unlabeled.next(), ctx.info)
        idx_u = ctx.unlabeled.pool[pos_u].to(ctx.device)
        pos_u = pos_u.to(ctx.device)
        unlabeled = BatchPart(views(ctx.x_train[idx_u], algo_views.unlabeled), index=pos_u)
    return Batch(labeled=labeled, unlabeled=unlabeled)


def optimizer_step(
    loss: Tensor,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
) -> bool:
    """Backward, optional clipping (of the unscaled gradients) and the optimizer step.

    Returns False when the fp16 gradient scaler found inf/NaN gradients and skipped the step (it then lowers its
    scale), so the caller can leave the EMA alone too.
    """
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return True
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale  # update() lowers the scale exactly when the step was skipped


def _train_step(ctx: Context, step: int, total: int) -> tuple[dict[str, float], Any, Tensor | None]:
    """One optimizer step; returns the scalar logs, the pseudo-labels and the unlabeled pool positions."""
    tick = time.perf_counter()
    batch = _next_batch(ctx)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    data_time = time.perf_counter() - tick

    set_lr(ctx.optimizer, ctx.cfg.optim.lr * lr_factor(step, total, ctx.cfg.optim))
    step_ctx = StepContext(
        step=step,
        total_steps=total,
        num_classes=ctx.bundle.num_classes,
        all_gather=all_gather_cat,
        all_gather_grad=all_gather_cat_grad,
        rank_offset=rank_offset,
        ema=ctx.ema.module,
    )
    amp = torch.autocast(ctx.device.type, dtype=ctx.autocast_dtype) if ctx.autocast_dtype else nullcontext()
    ctx.model.train()
    with amp:
        out = ctx.algorithm.step(ctx.model, batch, step_ctx)
    finite = all_ranks_agree(bool(torch.isfinite(out.loss.detach()).item()), ctx.info, ctx.device)
    if not finite:  # every rank stops together, none waits in a gradient all-reduce
        return {"loss": float("nan")}, None, None
    if optimizer_step(out.loss, ctx.optimizer, ctx.raw_model, ctx.scaler, ctx.cfg.optim.grad_clip):
        # A step the fp16 scaler skipped leaves the weights, and the EMA, unchanged.
        ctx.ema.update(ctx.raw_model, buffers=not ctx.algorithm.ema_keeps_own_buffers)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    logs = {k: float(v) for k, v in out.logs.items()}
    logs.update(loss=float(out.loss.detach()), lr=ctx.optimizer.param_groups[0]["lr"], data_time=data_time)
    logs["step_time"] = time.perf_counter() - tick
    index = batch.unlabeled.index if batch.unlabeled is not None else None
    return logs, out.pseudo, index


def _evaluate(ctx: Context, model: nn.Module, keep_test_logits: bool = False) -> dict[str, Any]:
    """Validation and test accuracy; with keep_test_logits the test logits too (for per-class figures)."""
    b, t = ctx.bundle, ctx.cfg.train
    kwargs = dict(
        batch_size=t.eval_batch_size,
        device=ctx.device,
        autocast_dtype=ctx.autocast_dtype,
        channels_last=t.channels_last and b.modality == "image",
    )
    out: dict[str, Any] = {}
    x_val, y_val = _val_set(ctx)
    binary = b.num_classes == 2  # two-class tasks also report ROC AUC
    if x_val is not None and len(x_val):
        val_logits = predict_logits(model, x_val, **kwargs)
        out["val_accuracy"] = accuracy(val_logits, y_val)
        if binary:
            out["val_auc"] = binary_roc_auc(val_logits, y_val)
    if b.x_test is not None and b.y_test is not None:
        logits = predict_logits(model, b.x_test, **kwargs)
        out["test_accuracy"] = accuracy(logits, b.y_test)
        if binary:
            out["test_auc"] = binary_roc_auc(logits, b.y_test)
        if keep_test_logits:
            out["test_logits"] = logits
    return out


def _val_set(ctx: Context) -> tuple[Tensor | None, Tensor | None]:
    b = ctx.bundle
    if b.x_val is not None:
        return b.x_val, b.y_val
    if len(ctx.split.val):
        idx = torch.from_numpy(np.array(ctx.split.val))
        return b.x_train[idx], b.y_train[idx]
    return None, None


def _loop(ctx: Context, resume: bool) -> Run:
    cfg, t, info = ctx.cfg, ctx.cfg.train, ctx.info
    budget = parse_duration(t.budget) if t.budget else None
    if budget is None and (t.steps is None or t.steps < 1):
        raise ConfigError("set --steps N (N >= 1) or --budget such as 15m")
    total = t.steps if budget is None else None
    start_step, history, wall_before = 0, [], 0.0
    best_val, eval_seconds = -math.inf, 0.0
    if resume:
        state = ckpt.load_checkpoint(ctx.folder, device="cpu")
        restore_context(ctx, state)
        start_step, total = int(state["step"]), int(state["total_steps"])
        history, wall_before = list(state["test_history"]), float(state["wall_seconds"])
        best_val = max(float(state.get("best_val", -math.inf)), _best_on_disk(ctx.folder))
        eval_seconds = float(state.get("eval_seconds", 0.0))  # so the budget's first re-plans count evaluations
        if info.is_main:
            _trim_metrics(ctx.folder / "metrics.jsonl", start_step)

    logger = MetricsLogger(ctx.folder if info.is_main else None, tensorboard=t.tensorboard)
    monitor = PseudoMonitor(_hidden_labels(ctx), ctx.bundle.num_classes)
    planner = BudgetPlanner(budget - wall_before, t.eval_every) if budget else None
    start = time.perf_counter()
    bar = tqdm(
        total=total,
        initial=start_step,
        disable=not (t.progress and info.is_main),
        dynamic_ncols=True,
        desc=cfg.algorithm.name,
    )
    step = last_good = start_step
    while total is None or step < total:
        logs, pseudo, index = _train_step(ctx, step, total if total is not None else 10**9)
        if not math.isfinite(logs["loss"]):
            bar.close()
            raise TrainingDiverged(
                f"the loss became {logs['loss']} at step {step}; {_kept(ctx, last_good)}: check the data for NaNs, "
                "or train again into a new --out with a lower --lr or --set optim.grad_clip=1.0 "
                "(--resume keeps the config)"
            )
        step += 1
        if pseudo is not None and index is not None:
            monitor.add(index, pseudo[0], pseudo[1])
        logger.add(logs)
        if planner is not None:
            planner.add_step_time(logs["step_time"])
            replan = total is None and planner.calibrated or step % t.log_every == 0
            if replan and planner.calibrated:
                if total is None:
                    tick = time.perf_counter()
                    _evaluate(ctx, ctx.ema.module)
                    eval_seconds = time.perf_counter() - tick
                planned = planner.plan(step, time.perf_counter() - start, eval_seconds)
                planned = broadcast_int(planned, info, ctx.device)  # every rank follows rank 0's plan
                if total is None or abs(planned - total) > 0.02 * total:  # small drifts keep the schedule still
                    total = planned
                    bar.total = total
        bar.update(1)
        if step % t.log_every == 0 or step == total:
            means = logger.means()
            bar.set_postfix({k: f"{means[k]:.3g}" for k in ("loss", "mask") if k in means})
            logger.flush(step, monitor.summary())
            monitor.reset()
        if total is not None and (step % t.eval_every == 0 or step == total) and info.is_main:
            tick = time.perf_counter()
            row = {"step": step, **_evaluate(ctx, ctx.ema.module)}
            eval_seconds = time.perf_counter() - tick
            if "test_accuracy" in row:
                history.append(row["test_accuracy"])
            if row.get("val_accuracy", -math.inf) > best_val:
                best_val = row["val_accuracy"]
                save_model(ctx.folder, ctx.ema.module, ctx.bundle, cfg, "best", step=step, val_accuracy=best_val)
            logger.write({**row, "kind": "eval"})
        if total is not None and (step % t.checkpoint_every == 0 or step == total):
            if not all_ranks_agree(_weights_finite(ctx), info, ctx.device):
                bar.close()
                raise TrainingDiverged(
                    f"the weights became NaN or infinite by step {step} (a finite loss with overflowing gradients); "
                    f"{_kept(ctx, last_good)}: train again into a new --out with a lower --lr or "
                    "--set optim.grad_clip=1.0"
                )
            wall = wall_before + time.perf_counter() - start
            extra = {"test_history": history, "wall_seconds": wall, "best_val": best_val, "eval_seconds": eval_seconds}
            state = context_state(ctx, step, total, extra)  # on every rank: it gathers per-rank RNG states
            if info.is_main:
                ckpt.save_checkpoint(ctx.folder, state)
            last_good = step
    bar.close()
    logger.close()
    wall = wall_before + time.perf_counter() - start
    if info.is_main:
        _finish(ctx, step, wall, history)
    return Run(ctx.folder)


def _kept(ctx: Context, last_good: int) -> str:
    if last_good > 0:
        return f"the last good checkpoint (step {last_good}) is kept in {ctx.folder}"
    return "no checkpoint was written yet"


def _weights_finite(ctx: Context) -> bool:
    """Whether the model's and the EMA's parameters are all finite: checked before a checkpoint replaces the last
    good one, since gradients can overflow (no fp16 scaler on CPU or with bf16) while the loss stays finite."""
    params = [p.detach() for m in (ctx.raw_model, ctx.ema.module) for p in m.parameters()]
    return bool(torch.stack([p.isfinite().all() for p in params]).all()) if params else True


def _best_on_disk(folder: Path) -> float:
    """The validation accuracy recorded in best.json: a best model saved after the checkpoint a run resumes from
    stays the best unless a later evaluation beats it."""
    try:
        return float(json.loads((folder / "best.json").read_text())["val_accuracy"])
    except (OSError, ValueError, KeyError, TypeError):
        return -math.inf


def _trim_metrics(path: Path, step: int) -> None:
    """Drop rows written after the checkpoint a resumed run restarts from."""
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short when the run was killed mid-write
            continue
        if isinstance(row, dict) and row.get("step", math.inf) <= step:
            rows.append(line)
    atomic_write_text(path, "".join(r + "\n" for r in rows))


def _hidden_labels(ctx: Context) -> Tensor:
    """The unlabeled pool's true labels where known (built-in datasets), else -1: for monitoring only."""
    if ctx.unlabeled is not None:
        return ctx.bundle.y_train.cpu()[ctx.unlabeled.pool.cpu()]
    return ctx.bundle.y_train[torch.from_numpy(np.array(ctx.split.unlabeled))].cpu()


def _finish(ctx: Context, step: int, wall: float, history: list[float]) -> None:
    cfg, b = ctx.cfg, ctx.bundle
    save_model(ctx.folder, ctx.ema.module, b, cfg, name="model")
    final = _evaluate(ctx, ctx.ema.module, keep_test_logits=True)
    summary: dict[str, Any] = {
        "algorithm": cfg.algorithm.name,
        "dataset": cfg.data.dataset,
        "model": cfg.model.name or b.default_model,
        "seed": cfg.train.seed,
        "steps": step,
        "wall_seconds": round(wall, 2),
        "num_labels": len(ctx.split.labeled),
        "num_unlabeled": len(ctx.split.unlabeled),
        "num_val": len(ctx.split.val) if b.x_val is None else len(b.x_val),
        "val_accuracy": final.get("val_accuracy"),
        "test_accuracy": final.get("test_accuracy"),
        **{k: final[k] for k in ("val_auc", "test_auc") if k in final},
        "test_accuracy_median_last": statistics.median(history[-cfg.train.eval_last_k :]) if history else None,
        "device": str(ctx.device),
        "world_size": ctx.info.world_size,
        "hardware": hardware_line(),
        "skipped_files": len(b.skipped_files),
    }
    if "test_logits" in final:
        logits = final["test_logits"]
        summary["per_class_test_accuracy"] = per_class_accuracy(logits, b.y_test, b.num_classes)
        summary["confusion_matrix"] = confusion_matrix(logits, b.y_test, b.num_classes)
    if b.skipped_files:
        warnings.warn(f"{len(b.skipped_files)} unreadable files were skipped (see summary.json)", stacklevel=2)
    atomic_write_text(ctx.folder / "summary.json", json.dumps(summary, indent=2))
