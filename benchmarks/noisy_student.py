"""Noisy Student on Fashion-MNIST at 10 labels per class: test accuracy of the teacher and of each iteration's
student, with noise and without (the ablation). Every stage trains for the same number of steps.

    python benchmarks/noisy_student.py                 # seeds 0-2, 2 iterations, 2000 steps per stage
    python benchmarks/noisy_student.py --seeds 0       # resumable: finished stages are skipped

Writes benchmarks/results/noisy_student.{csv,md}; the pipelines live in benchmarks/work/noisy-student/.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from pathlib import Path

from fewlabels.benchmark import hardware_line
from fewlabels.io import atomic_write_text
from fewlabels.pipelines.noisy_student import noisy_student

HERE = Path(__file__).parent
FIELDS = ["seed", "noise", "stage", "model", "test_accuracy", "test_accuracy_median_last", "steps", "wall_seconds"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="finished stages are read back")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps of every stage")
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--workdir", default=str(HERE / "work" / "noisy-student"))
    args = p.parse_args()
    overrides = {
        "train.steps": args.steps,
        "train.batch_size": 32,
        "train.unlabeled_ratio": 7,
        "train.eval_every": max(1, args.steps // 5),
        "train.log_every": max(1, args.steps // 20),
        "train.progress": False,
        "data.val_per_class": 50,
    }
    rows, started = [], time.perf_counter()
    for seed in args.seeds:
        for noise in (True, False):
            name = f"{'noised' if noise else 'plain'}-s{seed}"
            result = noisy_student(
                Path(args.workdir) / name,
                dataset="fashion-mnist",
                labels_per_class=args.labels_per_class,
                iterations=args.iterations,
                seed=seed,
                overrides=overrides,
                noise=noise,
            )
            for i, run in enumerate([result.teacher, *result.students]):
                s = run.summary
                rows.append(
                    {
                        "seed": seed,
                        "noise": noise,
                        "stage": "teacher" if i == 0 else f"student {i}",
                        "model": s["model"],
                        "test_accuracy": s["test_accuracy"],
                        "test_accuracy_median_last": s["test_accuracy_median_last"],
                        "steps": s["steps"],
                        "wall_seconds": s["wall_seconds"],
                    }
                )
            print(
                f"{name}: "
                + ", ".join(f"{100 * r.summary['test_accuracy']:.1f}" for r in [result.teacher, *result.students])
            )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    results = HERE / "results"
    atomic_write_text(results / "noisy_student.csv", buf.getvalue())
    lines = [
        "# Noisy Student on Fashion-MNIST",
        "",
        f"{args.labels_per_class} labels per class, {args.iterations} iterations, {args.steps} steps per stage "
        f"(batch 32 labeled + 224 pseudo-labeled), default cnn for teacher and students; seeds {args.seeds}. "
        "Threshold 0.3, classes balanced to the median count, soft labels; noised students get RandAugment + Cutout "
        "and dropout 0.5, plain ones neither. Test accuracy (%) of the final EMA model, mean ± std over seeds; "
        "nothing is selected on the test set.",
        f"Hardware: {hardware_line()}; "
        f"total wall time {(time.perf_counter() - started) / 60:.0f} min (stages finished earlier are read back).",
        "",
        "| stage | noised students | without noise (ablation) |",
        "|---|---|---|",
    ]
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    for stage in stages:
        cells = []
        for noise in (True, False):
            values = [100 * r["test_accuracy"] for r in rows if r["stage"] == stage and r["noise"] == noise]
            if len(values) > 1:
                cells.append(f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}")
            else:  # one seed: no spread to report
                cells.append(f"{values[0]:.1f}" if values else "-")
        lines.append(f"| {stage} | {cells[0]} | {cells[1]} |")
    text = "\n".join(lines) + "\n"
    atomic_write_text(results / "noisy_student.md", text)
    print(text)


if __name__ == "__main__":
    main()
