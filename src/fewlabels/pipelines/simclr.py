"""The SimCLRv2 semi-supervised pipeline (Chen et al. 2020): contrastive pretraining on every image, fine-tuning
from the first projection-head layer on the few labels, then distillation into a student on the unlabeled images.

    OUT/pretrain/    simclr on all training images (labels unused); model with `neck` projection layers; NT-Xent
                     temperature 0.5 by default (SimCLR's CIFAR value, suited to small batches)
    OUT/finetune/    supervised on the labels, initialised from pretrain/, keeping the first projection layer; no weight
                     decay unless the config sets optim.weight_decay (SimCLRv2's fine-tuning recipe)
    OUT/distill/     the student matches the fine-tuned model on the unlabeled images (function matching)
    OUT/baseline/    the same model trained on the labels alone, for comparison
    OUT/pipeline.json, OUT/report.md

Each stage is a resumable run folder; two-class tasks report ROC AUC beside accuracy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewlabels.config import Config
from fewlabels.engine.run import Run
from fewlabels.engine.stage import (
    check_algorithm_options,
    check_pipeline_settings,
    given_keys,
    pct,
    pipeline_config,
    run_stage,
    stage_algorithm,
)
from fewlabels.errors import ConfigError
from fewlabels.io import atomic_write_text

STAGES = ("baseline", "pretrain", "finetune", "distill")


@dataclass
class SimCLRResult:
    """The pipeline's runs by stage name, and the linear probe of the pretrained encoder."""

    out: Path
    runs: dict[str, Run]
    probe: dict[str, float | None] = field(default_factory=dict)
    """`linear_probe` of the pretraining run: test_accuracy and, for two classes, test_auc."""


def linear_probe(run: Run) -> dict[str, float | None]:
    """Judge a pretrained encoder the standard SimCLR way: a logistic regression on its frozen backbone features of
    the run's labeled rows (split.json), scored on the test set. The pretraining run's own classifier is never
    trained, so its test figures are chance; this is what the representation is worth with the few labels."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from fewlabels.augment import to_float
    from fewlabels.data import Split, load_data

    model = run.load_model()
    bundle = load_data(run.config.data)
    if bundle.x_test is None or bundle.y_test is None:
        return {"test_accuracy": None, "test_auc": None}
    split = Split.load(run.path / "split.json")
    split.check_fits(bundle)  # its rows index the training data the run saw
    labeled = np.array(split.labeled)  # a writable copy: torch indexes with it

    def feats(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.cat([model.features(to_float(x[i : i + 1024])) for i in range(0, len(x), 1024)]).numpy()

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(feats(bundle.x_train[labeled]), bundle.y_train.numpy()[labeled])
    test_x, y_test = feats(bundle.x_test), bundle.y_test.numpy()
    auc = float(roc_auc_score(y_test, probe.predict_proba(test_x)[:, 1])) if bundle.num_classes == 2 else None
    return {"test_accuracy": float(np.mean(probe.predict(test_x) == y_test)), "test_auc": auc}


def simclr(
    out: str | Path,
    *,
    dataset: str | None = None,
    labels_per_class: int | None = None,
    num_labels: int | None = None,
    classes: list[str | int] | None = None,
    seed: int | None = None,
    config: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Mapping[str, Any] | None = None,
    pretrain_steps: int | None = None,
    projection_layers: int = 2,
    finetune_from: int = 1,
    temperature: float = 0.5,
    student_model: str | None = None,
) -> SimCLRResult:
    """Run (or resume) the pipeline in `out`; `config` plus dotted `overrides` set every stage's training.

    `classes` cuts a task from the dataset (e.g. two classes: a binary task, reported with ROC AUC);
    `labels_per_class` / `num_labels` set the few labels. These, `dataset` and `seed` win over `config` and
    `overrides` when given; when neither gives a value the pipeline uses fashion-mnist, every class, every label
    and seed 0. Pretraining runs `pretrain_steps` (default: the config's steps) with a projection head of
    `projection_layers` hidden layers plus its output, and NT-Xent at `temperature` (default 0.5, the CIFAR value
    of SimCLR and the one for CPU-scale batches; 0.1 is ImageNet's at batch 4096); fine-tuning keeps the first
    `finetune_from` of them (SimCLRv2: 1) and, as in SimCLRv2, uses no weight decay (optim.weight_decay 0) unless
    `config` or `overrides` set optim.weight_decay. The student (`student_model`, default the same model) is
    distilled on the unlabeled images by function matching.

    User algorithm options go to the stages whose algorithm accepts them: `supervised` (baseline and fine-tuning),
    `simclr` (pretraining; its temperature is the `temperature` argument) and `distill` (whose teacher the
    pipeline sets; e.g. {'algorithm.mode': 'consistent'}). So {'algorithm.temperature': 2} sets the distillation
    temperature only. An option no stage uses is a ConfigError.
    """
    if not 0 <= finetune_from <= projection_layers:
        raise ConfigError(f"finetune_from must be between 0 and projection_layers ({projection_layers})")
    out = Path(out).absolute()
    task = {
        "data.dataset": dataset,
        "data.labels_per_class": labels_per_class,
        "data.num_labels": num_labels,
        "data.classes": list(classes) if classes else None,
        "train.seed": seed,
    }
    base = pipeline_config(config, overrides, arguments=task, fallbacks={"data.dataset": "fashion-mnist"})
    check_algorithm_options(base, {"supervised": (), "simclr": ("temperature",), "distill": ("teacher",)}, "SimCLR")
    settings = {
        "dataset": base.data.dataset,
        "classes": list(base.data.classes) if base.data.classes else None,
        "labels_per_class": base.data.labels_per_class,
        "num_labels": base.data.num_labels,
        "seed": base.train.seed,
        "pretrain_steps": pretrain_steps,
        "projection_layers": projection_layers,
        "finetune_from": finetune_from,
        "temperature": temperature,
        "student_model": student_model,
        "config": base.to_dict(),
    }
    check_pipeline_settings(out, settings, "SimCLR")
    supervised = stage_algorithm(base, "supervised")
    runs: dict[str, Run] = {}
    runs["baseline"] = run_stage(base.override(**supervised, **{"model.neck": finetune_from}), out / "baseline")
    pretrain = base.override(
        **stage_algorithm(base, "simclr", {"temperature": temperature}),
        **{
            "model.neck": projection_layers,
            **({"train.steps": pretrain_steps, "train.budget": None} if pretrain_steps else {}),
        },
    )
    runs["pretrain"] = run_stage(pretrain, out / "pretrain")
    probe_path = out / "pretrain-probe.json"
    if probe_path.exists():
        probe = json.loads(probe_path.read_text())
    else:
        probe = linear_probe(runs["pretrain"])
        atomic_write_text(probe_path, json.dumps(probe, indent=2))
    no_decay = {} if "optim.weight_decay" in given_keys(config, overrides) else {"optim.weight_decay": 0.0}
    finetune = base.override(
        **supervised,
        **{"model.neck": finetune_from, "model.init_from": str(runs["pretrain"].path), **no_decay},
    )
    runs["finetune"] = run_stage(finetune, out / "finetune")
    teacher = runs["finetune"]
    distill = base.override(
        **stage_algorithm(base, "distill", {"teacher": str(teacher.path)}, defaults={"mode": "function_matching"}),
        **{
            "model.name": student_model or teacher.model_info()["model"],
            "model.neck": finetune_from if not student_model else base.model.neck,
        },
    )
    runs["distill"] = run_stage(distill, out / "distill")
    result = SimCLRResult(out=out, runs=runs, probe=probe)
    _write_report(out, settings, result)
    return result


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _write_report(out: Path, settings: dict[str, Any], result: SimCLRResult) -> None:
    names = {
        "baseline": "labels only (no pretraining)",
        "pretrain": "SimCLR pretraining (classifier untrained)",
        "finetune": "fine-tuned from the projection layer",
        "distill": "distilled student",
    }
    task = f"classes {settings['classes']}" if settings["classes"] else "all classes"
    labels = settings["labels_per_class"] or settings["num_labels"] or "all"
    lines = [
        f"# SimCLR pipeline: {settings['dataset']}, {task}, labels {labels}, seed {settings['seed']}",
        "",
        "| stage | test ROC AUC | test accuracy | median-last accuracy | labels | steps | wall (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage in STAGES:
        s = result.runs[stage].summary
        lines.append(
            f"| {names[stage]} | {_auc(s.get('test_auc'))} | {pct(s.get('test_accuracy'))} | "
            f"{pct(s.get('test_accuracy_median_last'))} | {s.get('num_labels') if stage != 'pretrain' else 0} | "
            f"{s.get('steps')} | {s.get('wall_seconds')} |"
        )
        if stage == "pretrain" and result.probe:
            lines.append(
                f"| pretrained encoder + linear probe on the labels | {_auc(result.probe.get('test_auc'))} | "
                f"{pct(result.probe.get('test_accuracy'))} | - | {result.runs['baseline'].summary.get('num_labels')} "
                "| - | - |"
            )
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
