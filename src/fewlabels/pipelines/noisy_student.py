"""The Noisy Student pipeline (Xie et al. 2020): teacher -> pseudo-labels -> noised student, K times.

Each stage is a folder of the pipeline folder, so a killed pipeline resumes where it stopped:

    OUT/teacher/                        supervised run on the labels (label smoothing 0.1)
    OUT/iter-1/pseudo-labels/           the teacher's soft labels for the training set (eval mode, no augmentation)
    OUT/iter-1/selection.safetensors    filtered (max prob >= threshold) and class-balanced rows of U (unlabeled only)
    OUT/iter-1/student/                 noisy_student run: RandAugment + dropout (+ stochastic depth), soft targets
    OUT/iter-2/...                      the student of iteration 1 is the teacher of iteration 2
    OUT/pipeline.json, OUT/report.md    settings and per-stage test accuracy
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fewlabels.config import Config
from fewlabels.data import load_data, load_dataset
from fewlabels.data.split import Split
from fewlabels.engine.run import Run
from fewlabels.engine.stage import (
    check_algorithm_options,
    check_pipeline_settings,
    pct,
    pipeline_config,
    run_stage,
    stage_algorithm,
)
from fewlabels.errors import ConfigError
from fewlabels.io import atomic_write_text
from fewlabels.models import MODELS

if TYPE_CHECKING:
    from fewlabels.data import DataBundle
    from fewlabels.pipelines.pseudo_label import PseudoLabels


@dataclass
class NoisyStudentResult:
    """The pipeline's runs: the teacher, then one student per iteration."""

    out: Path
    teacher: Run
    students: list[Run] = field(default_factory=list)

    def accuracies(self) -> list[float]:
        """Test accuracy of the teacher and of each student, in order."""
        return [r.summary["test_accuracy"] for r in [self.teacher, *self.students]]


def _supports(model: str, option: str) -> bool:
    return option in inspect.signature(MODELS.get(model)).parameters


def _model_settings(base: Config, model: str, noise: bool, dropout: float, drop_path: float | None) -> dict[str, Any]:
    """Dotted overrides giving the student its model and its model noise.

    `drop_path` None means Noisy Student's stochastic depth, 0.2, or the config's model.options.drop_path; a model
    without stochastic depth then trains with dropout alone, with a warning. An explicit `drop_path` > 0 for such
    a model is a ConfigError; with `noise` off any stochastic depth is dropped (the ablation), with a warning.
    """
    options = dict(base.model.options)
    asked = options.pop("drop_path", None) if drop_path is None else drop_path
    if not noise:
        if asked:
            warnings.warn(
                f"drop_path={asked} is ignored: noise is off (the ablation trains the student without model noise)",
                UserWarning,
                stacklevel=3,
            )
        return {"model.name": model, "model.dropout": 0.0, "model.options": options}
    if asked is None:
        if _supports(model, "drop_path"):
            options["drop_path"] = 0.2
        else:
            warnings.warn(
                f"the student model {model!r} has no stochastic depth: its model noise is dropout "
                f"({dropout}) alone; choose a residual student (wrn28_2, wrn28_8, resnet18) for Noisy Student's "
                "stochastic depth",
                UserWarning,
                stacklevel=3,
            )
    elif asked > 0:
        if not _supports(model, "drop_path"):
            raise ConfigError(
                f"stochastic depth (drop_path={asked}) needs a residual student model (wrn28_2, wrn28_8, "
                f"resnet18), not {model!r}: choose one or set drop_path=0"
            )
        options["drop_path"] = asked
    return {"model.name": model, "model.dropout": dropout, "model.options": options}


def _parameter_count(cfg: Config, bundle: Any) -> int:
    from fewlabels.models import create_model

    model = create_model(
        cfg.model.name or bundle.default_model,
        num_classes=bundle.num_classes,
        input_shape=bundle.input_shape,
        neck=cfg.model.neck,
        **cfg.model.options,
    )
    return sum(p.numel() for p in model.parameters())


def check_student_size(teacher: Config, student: Config, bundle: Any) -> tuple[int, int]:
    """(teacher, student) parameter counts of the two stage configs' models on `bundle`'s data; a ConfigError when
    the student is smaller (Noisy Student's student is equal or larger), naming both counts."""
    sizes = _parameter_count(teacher, bundle), _parameter_count(student, bundle)
    if sizes[1] < sizes[0]:
        raise ConfigError(
            f"the student model {student.model.name!r} has {sizes[1]:,} parameters, fewer than the teacher model "
            f"{teacher.model.name!r} with {sizes[0]:,}: Noisy Student needs an equal-or-larger student (choose "
            "another --student-model; to compress a model use `fewlabels distill`)"
        )
    return sizes


def noisy_student(
    out: str | Path,
    *,
    dataset: str | None = None,
    labels_per_class: int | None = None,
    iterations: int = 2,
    seed: int | None = None,
    config: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Mapping[str, Any] | None = None,
    teacher_model: str | None = None,
    student_model: str | None = None,
    noise: bool = True,
    dropout: float = 0.5,
    drop_path: float | None = None,
    threshold: float = 0.3,
    per_class: int | None = None,
    hard: bool = False,
    batch_size: int = 512,
) -> NoisyStudentResult:
    """Run (or resume) the Noisy Student pipeline in `out` and return its runs.

    `config` plus dotted `overrides` (e.g. {'train.steps': 2000}) are the training settings of every stage.
    `dataset`, `labels_per_class` and `seed`, when given, win over them; when neither gives a value the pipeline
    uses fashion-mnist, 10 labels per class (unless data.num_labels is set; ask for every label with
    overrides={'data.labels_per_class': None}) and seed 0. User algorithm options go to the stages whose algorithm
    accepts them: `supervised` for the teacher (label smoothing 0.1 unless set) and `noisy_student` for the
    students (whose pseudo_labels and augment the pipeline sets); any other is a ConfigError.

    The teacher trains on the labels alone; each iteration pseudo-labels the training set with the current teacher
    in eval mode, keeps the rows of the split's unlabeled pool minus its labeled rows (never validation rows)
    whose top probability is >= `threshold`, balances the classes to `per_class` rows each (default: the median
    class count; small classes are duplicated), and trains a student (`student_model`, default the teacher's
    model; one with fewer parameters than the teacher's is a ConfigError) on labels plus those soft (or `hard`)
    labels with input noise (RandAugment + Cutout) and model noise (`dropout`; stochastic depth `drop_path`,
    default 0.2 on residual models, a warning on others). `noise=False` is the ablation: no augmentation, dropout
    or stochastic depth.
    """
    from fewlabels.pipelines.pseudo_label import PseudoLabels, pseudo_label, select

    if iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    out = Path(out).absolute()
    base = pipeline_config(
        config,
        overrides,
        arguments={"data.dataset": dataset, "data.labels_per_class": labels_per_class, "train.seed": seed},
        fallbacks={"data.dataset": "fashion-mnist", "data.labels_per_class": 10, "train.seed": 0},
    )
    dataset, labels_per_class, seed = base.data.dataset, base.data.labels_per_class, base.train.seed
    check_algorithm_options(base, {"supervised": (), "noisy_student": ("pseudo_labels", "augment")}, "Noisy Student")
    teacher_name = teacher_model or base.model.name or load_dataset(dataset, root=base.data.data_root).default_model
    student_name = student_model or teacher_name
    teacher_cfg = base.override(
        **stage_algorithm(base, "supervised", defaults={"label_smoothing": 0.1}), **{"model.name": teacher_name}
    )
    student_model_settings = _model_settings(base, student_name, noise, dropout, drop_path)
    bundle = None
    if student_name != teacher_name:
        bundle = load_data(base.data)
        check_student_size(teacher_cfg, base.override(**student_model_settings), bundle)
    settings = {
        "dataset": dataset,
        "labels_per_class": labels_per_class,
        "iterations": iterations,
        "seed": seed,
        "teacher_model": teacher_name,
        "student_model": student_name,
        "noise": noise,
        "dropout": dropout,
        "drop_path": drop_path,
        "threshold": threshold,
        "per_class": per_class,
        "hard": hard,
        "config": base.to_dict(),
    }
    check_pipeline_settings(out, settings, "Noisy Student")

    teacher = run_stage(teacher_cfg, out / "teacher")
    result = NoisyStudentResult(out=out, teacher=teacher)
    current = teacher
    for k in range(1, iterations + 1):
        stage = out / f"iter-{k}"
        student_dir = stage / "student"
        selection_path = stage / "selection.safetensors"
        fixed = {"pseudo_labels": str(selection_path), "augment": "strong" if noise else "none"}
        student_cfg = base.override(**stage_algorithm(base, "noisy_student", fixed), **student_model_settings)
        if not (student_dir / "summary.json").exists():
            labels_dir = stage / "pseudo-labels"
            if not PseudoLabels.exists(labels_dir) or not PseudoLabels(labels_dir).is_complete():
                if bundle is None:
                    bundle = load_data(base.data)
                # full=True: the student's soft targets are the teacher's whole softmax, not a top-5 rebuild.
                pseudo_label(current.path, bundle.x_train, labels_dir, batch_size=batch_size, full=True, progress=False)
            if not selection_path.exists():
                if bundle is None:
                    bundle = load_data(base.data)
                # The data may have changed since the teacher drew its split (a resumed pipeline).
                pool = run_unlabeled_pool(current.path, PseudoLabels(labels_dir), bundle)
                chosen = select(
                    PseudoLabels(labels_dir),
                    threshold=threshold,
                    per_class=per_class,
                    hard=hard,
                    seed=seed + k,
                    subset=pool,
                )
                if len(chosen) == 0:
                    raise ConfigError(
                        f"none of the {len(pool)} unlabeled rows got a pseudo-label with probability >= "
                        f"{threshold} from the teacher in {current.path}: lower --threshold or train the teacher "
                        "longer (more --steps)"
                    )
                chosen.save(selection_path)
        current = run_stage(student_cfg, student_dir)
        result.students.append(current)
        _write_report(out, settings, result)
    _write_report(out, settings, result)
    return result


def unlabeled_pool(split: Split) -> np.ndarray:
    """Noisy Student's U: the split's unlabeled rows minus its labeled rows and validation rows (sorted row indices
    into x_train). The split's pool includes the labeled rows by default (FixMatch's convention); the teacher
    already trained on those with their true labels."""
    return np.setdiff1d(split.unlabeled, np.union1d(split.labeled, split.val))


def run_unlabeled_pool(run: str | Path, labels: PseudoLabels, bundle: DataBundle | None = None) -> np.ndarray:
    """`unlabeled_pool` of the run's split, after checking that the pseudo-labels index the same training rows:
    their pool must have the split's row count and the run's classes (a split of other data would keep or drop
    the wrong rows without an error); with `bundle`, the split must also fit that data (`Split.check_fits`)."""
    split = Split.load(Path(run).expanduser() / "split.json")
    if bundle is not None:
        split.check_fits(bundle)
    if split.data is not None:
        rows, classes = split.data.get("rows"), split.data.get("classes")
        if rows is not None and rows != labels.num_items:
            raise ConfigError(
                f"the pseudo-labels in {labels.path} cover {labels.num_items} rows but the split of {run} was drawn "
                f"from {rows} training rows: pseudo-label that run's training data (its dataset, without a test set)"
            )
        if classes is not None and list(classes) != labels.classes:
            raise ConfigError(
                f"the pseudo-labels in {labels.path} have classes {labels.classes} but the run {run} has {classes}: "
                "pass the run whose teacher wrote them"
            )
    return unlabeled_pool(split)


def _write_report(out: Path, settings: dict[str, Any], result: NoisyStudentResult) -> None:
    from fewlabels.pipelines.pseudo_label import Selection

    lines = [
        f"# Noisy Student: {settings['dataset']}, {settings['labels_per_class']} labels per class, seed "
        f"{settings['seed']}, noise {'on' if settings['noise'] else 'off (ablation)'}",
        "",
        "| stage | model | test acc | median of last evals | val acc | pseudo-labeled rows | steps | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, run in enumerate([result.teacher, *result.students]):
        s = run.summary
        name = "teacher (labels only)" if i == 0 else f"student {i}"
        rows = "-" if i == 0 else str(len(Selection.load(out / f"iter-{i}" / "selection.safetensors").index))
        lines.append(
            f"| {name} | {s.get('model')} | {pct(s.get('test_accuracy'))} | "
            f"{pct(s.get('test_accuracy_median_last'))} | {pct(s.get('val_accuracy'))} | {rows} | "
            f"{s.get('steps')} | {s.get('wall_seconds')} |"
        )
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
