"""Distillation of a finished run into a new (often smaller) model: one engine run with the `distill` algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewlabels.config import Config, resolve_config
from fewlabels.engine.run import Run
from fewlabels.engine.stage import run_stage


def distill(
    teacher: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    mode: str = "function_matching",
    which: str = "model",
    dataset: str | None = None,
    config: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Run:
    """Train `model` (default: the teacher's) in `out` to match the teacher run's outputs; resumes if interrupted.

    The data defaults to the teacher's dataset and split settings; its images are the distillation set (labels
    unused). `mode` picks the variant of the `distill` algorithm ('function_matching', 'consistent',
    'independent', or 'fixed' for the precomputed-teacher-labels baseline). `config` and dotted `overrides` set
    everything else (e.g. {'train.steps': 20000}: distillation is patient).
    """
    teacher_run = Run(teacher)
    data = teacher_run.config.data
    base = resolve_config(config, **dict(overrides or {}))
    if config is None and not any(k.startswith("data.") for k in overrides or {}):
        base = base.override(**{"data.labels_per_class": data.labels_per_class, "data.num_labels": data.num_labels})
    cfg = base.override(
        **{
            "data.dataset": dataset or data.dataset,
            "algorithm.name": "distill",
            "algorithm.options": {"teacher": str(teacher_run.path.absolute()), "mode": mode, "which": which},
            "model.name": model or teacher_run.model_info(which)["model"],
        }
    )
    return run_stage(cfg, out)
