"""The `fewlabels` command: each subcommand is a thin call of one API function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from fewlabels.errors import FewLabelsError
from fewlabels.io import atomic_open

# Flag -> dotted config key. Flags left unset do not override the YAML file or the defaults.
TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "dataset": ("data.dataset", str, "built-in name, image folder, .csv manifest or .npz file"),
    "data_root": ("data.data_root", str, "folder with a built-in dataset's files"),
    "labels_per_class": ("data.labels_per_class", int, "labeled examples per class (stratified, seeded)"),
    "num_labels": ("data.num_labels", int, "total labeled examples, spread evenly across classes"),
    "val_per_class": ("data.val_per_class", int, "validation examples held out per class"),
    "image_size": ("data.image_size", int, "resize user images to this square size"),
    "algorithm": ("algorithm.name", str, "see `fewlabels algorithms`"),
    "model": ("model.name", str, "see `fewlabels models` (default: the dataset's)"),
    "steps": ("train.steps", int, "optimizer steps"),
    "budget": (
        "train.budget",
        str,
        "wall-clock budget, e.g. 15m; fixes the step count so the schedule ends on time",
    ),
    "batch_size": ("train.batch_size", int, "global labeled batch size B"),
    "unlabeled_ratio": ("train.unlabeled_ratio", int, "mu: unlabeled batch = mu * B"),
    "lr": ("optim.lr", float, "peak learning rate"),
    "optimizer": ("optim.optimizer", str, "sgd or adamw"),
    "seed": ("train.seed", int, "fixes split, data order, augmentation and initialisation"),
    "device": ("train.device", str, "auto, cpu, cuda or cuda:N"),
    "eval_every": ("train.eval_every", int, "evaluate every N steps"),
    "out": ("out", str, "run folder (default: runs/<dataset>-<algorithm>-<labels>-s<seed>)"),
}
SWITCHES = {
    "download": ("data.download", "allow torchvision to download a missing built-in dataset"),
    "strict": ("data.strict", "fail on an unreadable image instead of skipping it"),
    "compile": ("train.compile", "torch.compile the model"),
    "tensorboard": ("train.tensorboard", "also write TensorBoard logs"),
}


def _config_flags(p: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    """--config, the train flags and switches whose config keys are not in `skip`, --no-progress and --set."""
    p.add_argument("--config", help="YAML file of defaults (sections data, model, optim, algorithm, train)")
    for flag, (key, typ, text) in TRAIN_FLAGS.items():
        if key not in skip:
            p.add_argument("--" + flag.replace("_", "-"), dest=flag, type=typ, default=None, help=text)
    for flag, (key, text) in SWITCHES.items():
        if key not in skip:
            p.add_argument("--" + flag, dest=flag, action="store_true", default=None, help=text)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set algorithm.threshold=0.9 --set train.ema=0.99",
    )


def _train_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model from a few labels plus unlabeled data")
    _config_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def _benchmark_parser(sub: Any) -> None:
    from fewlabels.benchmark import GRID_KEYS

    p = sub.add_parser(
        "benchmark",
        help="train algorithms x labels per class x seeds on one dataset; write results.csv, report.md and a plot",
    )
    p.add_argument("--out", required=True, help="benchmark folder (resumable): runs/, results.csv, report.md, plot")
    p.add_argument("--dataset", required=True, help="built-in name, image folder, .csv manifest or .npz file")
    p.add_argument(
        "--algorithms",
        nargs="+",
        required=True,
        help="algorithms to compare (see `fewlabels algorithms`); supervised is always included",
    )
    p.add_argument("--labels-per-class", nargs="+", type=int, required=True, help="label budgets, e.g. 4 10 25")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of every cell (default: 0 1 2)")
    _config_flags(p, GRID_KEYS)
    p.add_argument(
        "--option",
        dest="options",
        action="append",
        default=[],
        metavar="ALGORITHM.OPTION=VALUE",
        help="an option of one algorithm, e.g. --option fixmatch.threshold=0.9",
    )
    p.add_argument("--no-ceiling", action="store_true", help="skip the supervised runs on all labels")
    p.add_argument("--jobs", "-j", type=int, default=1, help="cells trained at once, each in its own process")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from finished runs; train nothing")


def _distill_parser(sub: Any) -> None:
    from fewlabels.algorithms.distill import MODES

    p = sub.add_parser(
        "distill", help="train a (smaller) student to match a finished run's outputs on the images, labels unused"
    )
    p.add_argument("teacher", help="the teacher's run folder")
    p.add_argument("--mode", default="function_matching", choices=MODES, help="distillation variant")
    p.add_argument("--which", default="model", choices=["model", "best"], help="the teacher's final or best model")
    _config_flags(p, frozenset({"algorithm.name"}))


def _pseudo_label_parser(sub: Any) -> None:
    p = sub.add_parser(
        "pseudo-label",
        help="label an unlabeled pool with a finished run's model, in shards (streamed; resumable; torchrun-ready)",
    )
    p.add_argument("teacher_run", help="the teacher's run folder")
    p.add_argument("data", help="built-in dataset name, image folder, CSV with a path column, .npz or .npy (N,...)")
    p.add_argument("--out", required=True, help="folder for manifest.json and shard-NNNNN.safetensors")
    p.add_argument("--which", default="model", choices=["model", "best"], help="the teacher's final or best model")
    p.add_argument("--shard-size", type=int, default=10_000, help="items per output file")
    p.add_argument("--batch-size", type=int, default=512, help="items per forward pass")
    p.add_argument("--top-k", type=int, default=5, help="probabilities kept per item (plus the remaining mass)")
    p.add_argument("--full", action="store_true", help="also keep the full probability vectors")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the soft labels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-root", default=None, help="folder with a built-in dataset's files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _select_parser(sub: Any) -> None:
    p = sub.add_parser(
        "select", help="Noisy Student's filtering and class balancing of pseudo-labels; writes a selection file"
    )
    p.add_argument("labels", help="a folder written by `fewlabels pseudo-label`")
    p.add_argument("--out", required=True, help="the selection file (.safetensors, plus a .json sidecar)")
    p.add_argument("--threshold", type=float, default=0.3, help="keep pseudo-labels whose top probability >= this")
    p.add_argument("--per-class", type=int, default=None, help="rows per class after balancing (default: median)")
    p.add_argument("--no-balance", action="store_true", help="do not copy the rows of under-filled classes")
    p.add_argument("--hard", action="store_true", help="label-smoothed one-hot labels instead of soft ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the copies drawn for under-filled classes")
    p.add_argument(
        "--run",
        default=None,
        help="keep only rows of this run's U (training rows neither labeled nor validation); the pseudo-labels must "
        "cover that run's training set",
    )


def _noisy_student_parser(sub: Any) -> None:
    p = sub.add_parser(
        "noisy-student", help="teacher -> pseudo-labels -> noised student, iterated (each stage a resumable run)"
    )
    p.add_argument("--iterations", type=int, default=2, help="students trained one after another")
    p.add_argument("--student-model", help="the students' model (default: the teacher's; equal or larger)")
    p.add_argument("--no-noise", action="store_true", help="ablation: no augmentation, dropout or stochastic depth")
    p.add_argument("--dropout", type=float, default=0.5, help="student dropout before the classifier")
    p.add_argument("--drop-path", type=float, default=None, help="student stochastic depth (residual models)")
    p.add_argument("--threshold", type=float, default=0.3, help="keep pseudo-labels whose top probability >= this")
    p.add_argument("--per-class", type=int, default=None, help="rows per class after balancing (default: median)")
    p.add_argument("--hard", action="store_true", help="one-hot pseudo-labels instead of soft ones")
    _config_flags(p, frozenset({"algorithm.name"}))


def _simclr_parser(sub: Any) -> None:
    p = sub.add_parser(
        "simclr", help="contrastive pretraining, fine-tuning on the labels, distillation (each stage resumable)"
    )
    p.add_argument("--pretrain-steps", type=int, default=None, help="steps of the pretraining (default: --steps)")
    p.add_argument("--projection-layers", type=int, default=2, help="hidden layers of the projection head")
    p.add_argument("--finetune-from", type=int, default=1, help="projection layers kept for fine-tuning")
    p.add_argument(
        "--temperature", type=float, default=0.5, help="NT-Xent temperature of the pretraining (default: 0.5)"
    )
    p.add_argument("--student-model", help="the distilled student's model (default: the fine-tuned model's)")
    _config_flags(p, frozenset({"algorithm.name"}))


def _predict_parser(sub: Any) -> None:
    p = sub.add_parser(
        "predict", help="predict classes for inputs, a batch at a time; writes CSV input,class,confidence[,class_2,...]"
    )
    p.add_argument("run", help="run folder")
    p.add_argument(
        "inputs",
        nargs="+",
        help="image files or folders, a .csv with a path column (relative to the CSV), a .npz with x, or a .npy",
    )
    p.add_argument("--which", default="model", choices=["model", "best"], help="final EMA model or best on val")
    p.add_argument(
        "--top-k",
        type=int,
        default=1,
        metavar="K",
        help="report the K most probable classes (adds columns class_2,confidence_2,...; capped at the classes)",
    )
    p.add_argument("--batch-size", type=int, default=256, help="inputs read and predicted at a time (default: 256)")
    p.add_argument(
        "--out", "--output", "-o", dest="out", help="CSV file to write, atomically (default: standard output)"
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _export_parser(sub: Any) -> None:
    from fewlabels.export import FORMATS

    p = sub.add_parser(
        "export",
        help="write a finished run's model, preprocessing and class names to one ONNX, TorchScript or safetensors file",
    )
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--format",
        dest="fmt",
        required=True,
        metavar="{" + ",".join(FORMATS) + "}",
        help="onnx (needs pip install 'fewlabels[export]'), torchscript or safetensors",
    )
    p.add_argument("--which", default="model", choices=["model", "best"], help="final EMA model or best on val")
    p.add_argument(
        "--out",
        help="file or folder to write (default: RUN/export/WHICH.onnx, WHICH.pt or WHICH.safetensors, WHICH being "
        "model or best)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="fewlabels", description="Semi-supervised learning from a few labels.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    p = sub.add_parser("evaluate", help="evaluate a finished run on its test set")
    p.add_argument("run", help="run folder")
    p.add_argument("--which", default="model", choices=["model", "best"], help="final EMA model or best on val")
    _predict_parser(sub)
    _export_parser(sub)
    _benchmark_parser(sub)
    _distill_parser(sub)
    _pseudo_label_parser(sub)
    _select_parser(sub)
    _noisy_student_parser(sub)
    _simclr_parser(sub)
    p = sub.add_parser("report", help="write a report of a run: curves, confusion matrix, pseudo-labels, config")
    p.add_argument("run", help="run folder")
    p.add_argument("--format", dest="fmt", default="html", choices=["html", "md"], help="HTML (self-contained) or md")
    p.add_argument("--out", help="folder for the report and its figures (default: RUN/report)")
    sub.add_parser("algorithms", help="list the algorithms and their options")
    sub.add_parser("models", help="list the models")
    sub.add_parser("datasets", help="list the built-in datasets")
    return parser


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Dotted config overrides from the flags that were given, then --set assignments."""
    from fewlabels.config import parse_assignment

    overrides: dict[str, Any] = {}
    for flag, (key, _, _) in TRAIN_FLAGS.items():
        if getattr(args, flag, None) is not None:
            overrides[key] = getattr(args, flag)
    for flag, (key, _) in SWITCHES.items():
        if getattr(args, flag, None):
            overrides[key] = True
    if args.no_progress:
        overrides["train.progress"] = False
    # The flag given wins over the other one's value in --config: --steps clears a YAML budget, --budget a YAML
    # step count (both flags at once: the budget, as in the config).
    if "train.budget" in overrides:
        overrides.setdefault("train.steps", None)
    elif "train.steps" in overrides:
        overrides["train.budget"] = None
    for text in args.assignments:
        key, value = parse_assignment(text)
        overrides[key] = value
    return overrides


def _cmd_train(args: argparse.Namespace) -> None:
    from fewlabels.engine.trainer import train

    _print_run(train(args.config, resume=args.resume, **train_overrides(args)))


def _cmd_benchmark(args: argparse.Namespace) -> None:
    from fewlabels.benchmark import GRID_KEYS, parse_algorithm_options, run_benchmark, write_benchmark_report

    if args.report_only:
        result = write_benchmark_report(args.out)
    else:
        # --dataset and --out are the grid's own arguments; the benchmark decides how cells report progress
        overrides = {k: v for k, v in train_overrides(args).items() if k not in GRID_KEYS}
        result = run_benchmark(
            args.out,
            dataset=args.dataset,
            algorithms=args.algorithms,
            labels_per_class=args.labels_per_class,
            seeds=args.seeds,
            config=args.config,
            overrides=overrides,
            algorithm_options=parse_algorithm_options(args.options),
            ceiling=not args.no_ceiling,
            jobs=args.jobs,
            progress=not args.no_progress,
        )
    print(result.report_md.read_text())
    print(f"benchmark folder: {result.out}")


def _print_run(run: Any) -> None:
    s = run.summary
    if s and os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        keys = ("algorithm", "dataset", "num_labels", "steps", "wall_seconds", "val_accuracy", "test_accuracy")
        print(json.dumps({k: s[k] for k in (*keys, "test_accuracy_median_last")}))
        print(f"run folder: {run.path}")


def _cmd_distill(args: argparse.Namespace) -> None:
    from fewlabels.pipelines.distill import distill

    overrides = train_overrides(args)
    out = overrides.pop("out", None) or f"runs/distill-{args.mode}-{os.path.basename(os.path.normpath(args.teacher))}"
    dataset = overrides.pop("data.dataset", None)
    model = overrides.pop("model.name", None)
    run = distill(
        args.teacher,
        out,
        model=model,
        mode=args.mode,
        which=args.which,
        dataset=dataset,
        config=args.config,
        overrides=overrides,
    )
    _print_run(run)


def _cmd_pseudo_label(args: argparse.Namespace) -> None:
    from fewlabels.pipelines.pseudo_label import pseudo_label

    labels = pseudo_label(
        args.teacher_run,
        args.data,
        args.out,
        which=args.which,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        top_k=args.top_k,
        full=args.full,
        temperature=args.temperature,
        device=args.device,
        progress=not args.no_progress,
        data_root=args.data_root,
    )
    if os.environ.get("RANK", "0") == "0":
        print(f"{labels.num_items} items in {labels.num_shards} shards: {labels.path}")


def _cmd_select(args: argparse.Namespace) -> None:
    from fewlabels.engine.run import Run
    from fewlabels.pipelines.noisy_student import run_unlabeled_pool
    from fewlabels.pipelines.pseudo_label import PseudoLabels, select

    labels = PseudoLabels(args.labels)
    subset = None if args.run is None else run_unlabeled_pool(Run(args.run).path, labels)
    chosen = select(
        labels,
        threshold=args.threshold,
        per_class=args.per_class,
        balance=not args.no_balance,
        hard=args.hard,
        seed=args.seed,
        subset=subset,
    )
    path = chosen.save(args.out)
    counts = ", ".join(f"{c}: {n}" for c, n in zip(chosen.classes, chosen.class_counts.tolist(), strict=True))
    print(f"{len(chosen)} rows ({counts}) -> {path}")


def _cmd_noisy_student(args: argparse.Namespace) -> None:
    from fewlabels.pipelines.noisy_student import noisy_student

    overrides = train_overrides(args)
    out = overrides.pop("out", None)
    if not out:
        raise FewLabelsError("noisy-student needs --out DIR, the pipeline folder (rerun the same command to resume)")
    # Flags and --set win over --config; the pipeline's own defaults fill what neither gives.
    model = overrides.pop("model.name", None)
    result = noisy_student(
        out,
        iterations=args.iterations,
        config=args.config,
        overrides=overrides,
        teacher_model=model,
        student_model=args.student_model,
        noise=not args.no_noise,
        dropout=args.dropout,
        drop_path=args.drop_path,
        threshold=args.threshold,
        per_class=args.per_class,
        hard=args.hard,
    )
    print((result.out / "report.md").read_text())


def _cmd_simclr(args: argparse.Namespace) -> None:
    from fewlabels.pipelines.simclr import simclr

    overrides = train_overrides(args)
    out = overrides.pop("out", None)
    if not out:
        raise FewLabelsError("simclr needs --out DIR, the pipeline folder (rerun the same command to resume)")
    # Flags and --set win over --config; the pipeline's own defaults fill what neither gives.
    result = simclr(
        out,
        config=args.config,
        overrides=overrides,
        pretrain_steps=args.pretrain_steps,
        projection_layers=args.projection_layers,
        finetune_from=args.finetune_from,
        temperature=args.temperature,
        student_model=args.student_model,
    )
    print((result.out / "report.md").read_text())


def _cmd_report(args: argparse.Namespace) -> None:
    from fewlabels.report import write_report

    print(f"report: {write_report(args.run, out=args.out, fmt=args.fmt)}")


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from fewlabels.api import evaluate

    result = evaluate(args.run, which=args.which)
    print(json.dumps(result, indent=2))


def _cmd_predict(args: argparse.Namespace) -> None:
    from fewlabels.api import iter_predictions, write_predictions

    predictions = iter_predictions(
        args.run,
        args.inputs,
        which=args.which,
        top_k=args.top_k,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if not args.out:
        write_predictions(predictions, sys.stdout)
        return
    with atomic_open(args.out) as f:
        write_predictions(predictions, f)


def _cmd_export(args: argparse.Namespace) -> None:
    from fewlabels.export import export_run

    print(f"exported: {export_run(args.run, args.fmt, out=args.out, which=args.which)}")


def _cmd_list(args: argparse.Namespace) -> None:
    if args.command == "algorithms":
        from fewlabels.algorithms import algorithm_options, describe_algorithms
        from fewlabels.algorithms.classic import CLASSIC, classic_options

        for name, doc in describe_algorithms():
            opts = ", ".join(f"{k}={v}" for k, v in algorithm_options(name).items()) or "-"
            print(f"{name:20s} {doc}\n{'':20s} options: {opts}")
        print("\nClassic baselines (scikit-learn, one fit on features; for `benchmark`, `train` and the estimator):")
        for name in CLASSIC.names():
            doc = (CLASSIC.get(name).__doc__ or "").strip().splitlines()[0]
            opts = ", ".join(f"{k}={v}" for k, v in classic_options(name).items()) or "-"
            print(f"{name:20s} {doc}\n{'':20s} options: {opts}")
    elif args.command == "models":
        from fewlabels.models import describe_models

        for name, doc in describe_models():
            print(f"{name:10s} {doc}")
    else:
        from fewlabels.data import DATASETS

        for name in DATASETS.names():
            doc = (DATASETS.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"{name:14s} {doc}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fewlabels` console script."""
    args = build_parser().parse_args(argv)
    handlers = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "predict": _cmd_predict,
        "export": _cmd_export,
        "benchmark": _cmd_benchmark,
        "distill": _cmd_distill,
        "pseudo-label": _cmd_pseudo_label,
        "select": _cmd_select,
        "noisy-student": _cmd_noisy_student,
        "simclr": _cmd_simclr,
        "report": _cmd_report,
    }
    try:
        handlers.get(args.command, _cmd_list)(args)
    except FewLabelsError as exc:
        print(f"fewlabels: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system mistake (permissions, a full disk, a folder for a file): one line
        print(f"fewlabels: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"fewlabels: interrupted{INTERRUPTED.get(args.command, '')}", file=sys.stderr)
        return 130
    return 0


INTERRUPTED = {
    "train": "; resume with the same command plus --resume",
    "benchmark": "; rerun the same command to resume (finished runs are kept)",
    "pseudo-label": "; rerun the same command to resume (finished shards are kept)",
    "noisy-student": "; rerun the same command to resume (from the unfinished stage's last checkpoint)",
    "simclr": "; rerun the same command to resume (from the unfinished stage's last checkpoint)",
    "distill": "; rerun the same command to resume (from the last checkpoint)",
    "select": "; nothing was written",
    "predict": "; nothing was written",
    "export": "; nothing was written",
}
"""What an interrupted command leaves, and how to carry on, after 'fewlabels: interrupted'."""


if __name__ == "__main__":
    sys.exit(main())
