"""Distillation of a finished run into a new (often smaller) model: one engine run with the `distill` algorithm."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fewlabels.config import Config
from fewlabels.engine.run import Run
from fewlabels.engine.stage import check_algorithm_options, data_settings, pipeline_config, run_stage, stage_algorithm


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
    """Train `model` (default: the config's model.name, else the teacher's) in `out` to match the teacher run's
    outputs; resumes if interrupted.

    The student inherits the teacher run's whole `data` section (dataset, split settings, classes, image size,
    data root, ...) and its `train.seed`, so its split, and so its validation rows, are the teacher's; each of
    these keys that `config`, `overrides` or `dataset` sets wins over the teacher's. The images are the
    distillation set (labels unused unless algorithm.lambda_l > 0). `mode` picks the variant of the `distill`
    algorithm ('function_matching', 'consistent', 'independent', or 'fixed' for the precomputed-teacher-labels
    baseline). `config` and dotted `overrides` set everything else (e.g. {'train.steps': 20000}: distillation is
    patient); their algorithm options that `distill` accepts (e.g. {'algorithm.lambda_l': 1}) are kept, while
    teacher, mode and which come from the arguments; any other algorithm option is a ConfigError.
    """
    teacher_run = Run(teacher)
    inherited = {**data_settings(teacher_run.config), "train.seed": teacher_run.config.train.seed}
    base = pipeline_config(config, overrides, arguments={"data.dataset": dataset}, fallbacks=inherited)
    fixed = {"teacher": str(teacher_run.path.absolute()), "mode": mode, "which": which}
    check_algorithm_options(base, {"distill": fixed}, "distill")
    cfg = base.override(
        **stage_algorithm(base, "distill", fixed),
        **{"model.name": model or base.model.name or teacher_run.model_info(which)["model"]},
    )
    return run_stage(cfg, out)
