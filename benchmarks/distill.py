"""Distillation on Fashion-MNIST: a small MLP student learns from a CNN teacher's outputs on the training images
(labels unused), by function matching and by the cheaper variants, against the precomputed-teacher-labels baseline
('fixed') and against the same MLP trained on every label. Every student trains for the same number of steps.

    python benchmarks/distill.py                  # resumable: finished runs are skipped
    python benchmarks/distill.py --student-steps 20000 --workdir benchmarks/work/distill-20k \
        --results benchmarks/results/distill-20k     # the patient schedule

Writes benchmarks/results/distill.{csv,md}; runs live in benchmarks/work/distill/.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from pathlib import Path

from fewlabels.benchmark import hardware_line
from fewlabels.config import resolve_config
from fewlabels.engine.stage import run_stage
from fewlabels.io import atomic_write_text
from fewlabels.models import create_model
from fewlabels.pipelines.distill import distill

HERE = Path(__file__).parent
MODES = ["function_matching", "consistent", "fixed"]
STUDENT = {"model.name": "mlp", "model.options": {"hidden": [64, 32]}}  # about half the teacher


def params(name: str, **options: object) -> int:
    return sum(p.numel() for p in create_model(name, 10, (1, 28, 28), **options).parameters())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-steps", type=int, default=4000)
    p.add_argument("--student-steps", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=str(HERE / "work" / "distill"))
    p.add_argument("--results", type=Path, default=HERE / "results" / "distill", help="output stem (.csv/.md)")
    args = p.parse_args()
    work = Path(args.workdir)
    common = {
        "data.dataset": "fashion-mnist",
        "data.val_per_class": 50,
        "train.seed": args.seed,
        "train.batch_size": 32,
        "train.unlabeled_ratio": 7,
        "train.progress": False,
    }

    def steps(n: int) -> dict:
        return {"train.steps": n, "train.eval_every": max(1, n // 5), "train.log_every": max(1, n // 20)}

    started = time.perf_counter()
    teacher_cfg = resolve_config(
        **common, **steps(args.teacher_steps), **{"algorithm.name": "supervised", "model.name": "cnn"}
    )
    teacher = run_stage(teacher_cfg, work / "teacher-cnn")
    runs = {"teacher: cnn, every label": teacher}
    labels_cfg = resolve_config(**common, **steps(args.student_steps), **{"algorithm.name": "supervised"}, **STUDENT)
    runs["mlp, every label (no teacher)"] = run_stage(labels_cfg, work / "mlp-labels")
    for mode in MODES:
        overrides = {**common, **steps(args.student_steps), "model.options": STUDENT["model.options"]}
        overrides.pop("data.dataset")
        runs[f"mlp distilled: {mode}"] = distill(
            teacher.path, work / f"mlp-{mode}", model="mlp", mode=mode, overrides=overrides
        )

    rows = []
    for name, run in runs.items():
        s = run.summary
        agreement = [m["agreement"] for m in run.metrics() if "agreement" in m]
        rows.append(
            {
                "run": name,
                "model": s["model"],
                "test_accuracy": s["test_accuracy"],
                "test_accuracy_median_last": s["test_accuracy_median_last"],
                "train_agreement_last": agreement[-1] if agreement else "",
                "steps": s["steps"],
                "wall_seconds": s["wall_seconds"],
            }
        )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(args.results.with_suffix(".csv"), buf.getvalue())
    lines = [
        "# Distillation: CNN teacher -> MLP student on Fashion-MNIST",
        "",
        f"Teacher: cnn ({params('cnn'):,} parameters), supervised on every label, {args.teacher_steps} steps. Student: "
        f"mlp with hidden layers 64, 32 ({params('mlp', hidden=[64, 32]):,} parameters), {args.student_steps} steps, "
        "batch 32 + 224 images; distillation uses the training images without labels. Seed "
        f"{args.seed}. Test accuracy (%) of the final EMA model; agreement = student-teacher argmax agreement on the "
        "last training batch window.",
        f"Hardware: {hardware_line()}; wall time of this call {(time.perf_counter() - started) / 60:.0f} min.",
        "",
        "| run | test acc | median of last evals | agreement | steps | wall (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        agree = f"{100 * r['train_agreement_last']:.1f}" if r["train_agreement_last"] != "" else "-"
        lines.append(
            f"| {r['run']} | {100 * r['test_accuracy']:.2f} | {100 * r['test_accuracy_median_last']:.2f} | {agree} | "
            f"{r['steps']} | {r['wall_seconds']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_text(args.results.with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main()
