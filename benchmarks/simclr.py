"""The SimCLR pipeline on a binary task cut from Fashion-MNIST with 2% of the labels: test ROC AUC (and accuracy)
after each stage against the same model trained on the labels alone.

    python benchmarks/simclr.py                       # Shirt vs T-shirt/top, 2% labels, seeds 0-2 (resumable)
    python benchmarks/simclr.py --classes Pullover Coat --seeds 0

Writes benchmarks/results/simclr.{csv,md} (simclr-<classes>.{csv,md} for another pair of classes); the pipelines
live in benchmarks/work/simclr/.
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
from fewlabels.pipelines.simclr import STAGES, simclr

HERE = Path(__file__).parent
PROBE = "pretrain + linear probe"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", nargs=2, default=["Shirt", "T-shirt/top"])
    p.add_argument("--label-fraction", type=float, default=0.02)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="finished stages are read back")
    p.add_argument("--steps", type=int, default=1500, help="steps of the fine-tuning, baseline and distillation")
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--workdir", default=str(HERE / "work" / "simclr"))
    args = p.parse_args()
    per_class = round(6000 * args.label_fraction)  # Fashion-MNIST has 6,000 training images per class
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
        result = simclr(
            Path(args.workdir) / f"{'-'.join(c.replace('/', '') for c in args.classes)}-s{seed}",
            dataset="fashion-mnist",
            classes=list(args.classes),
            labels_per_class=per_class,
            seed=seed,
            overrides=overrides,
            pretrain_steps=args.pretrain_steps,
        )
        for stage in STAGES:
            s = result.runs[stage].summary
            rows.append(
                {
                    "seed": seed,
                    "stage": stage,
                    "test_auc": s.get("test_auc"),
                    "test_accuracy": s["test_accuracy"],
                    "num_labels": s["num_labels"],
                    "steps": s["steps"],
                    "wall_seconds": s["wall_seconds"],
                }
            )
            if stage == "pretrain":
                rows.append({**rows[-1], "stage": PROBE, **result.probe})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    # The default task keeps the committed name; another pair of classes gets its own files.
    default = args.classes == ["Shirt", "T-shirt/top"]
    stem = "simclr" if default else f"simclr-{'-'.join(c.replace('/', '') for c in args.classes)}"
    atomic_write_text(HERE / "results" / f"{stem}.csv", buf.getvalue())
    lines = [
        f"# SimCLR pipeline: Fashion-MNIST {args.classes[0]} vs {args.classes[1]}, "
        f"{100 * args.label_fraction:g}% of the labels ({per_class} per class)",
        "",
        f"cnn for every stage; pretraining {args.pretrain_steps} steps, the other stages {args.steps} steps, batch 32 "
        "labeled + 224 unlabeled; seeds "
        f"{args.seeds}. Test ROC AUC and accuracy (%) of the final EMA model, mean ± std over seeds; nothing is "
        "selected on the test set. The pretraining row's own classifier is untrained (chance); the linear-probe row "
        "judges its encoder: a logistic regression on frozen backbone features of the labeled rows.",
        f"Hardware: {hardware_line()}; wall time of this call {(time.perf_counter() - started) / 60:.0f} min.",
        "",
        "| stage | test ROC AUC | test accuracy | wall (s) |",
        "|---|---|---|---|",
    ]
    for stage in (STAGES[0], STAGES[1], PROBE, *STAGES[2:]):
        rs = [r for r in rows if r["stage"] == stage]

        def stat(key: str, scale: float, digits: int, rs: list = rs) -> str:
            values = [scale * r[key] for r in rs if r[key] is not None]
            if not values:
                return "-"
            if len(values) == 1:  # one seed: no spread to report
                return f"{values[0]:.{digits}f}"
            return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

        lines.append(
            f"| {stage} | {stat('test_auc', 1, 4)} | {stat('test_accuracy', 100, 2)} | "
            f"{statistics.mean(r['wall_seconds'] for r in rs):.0f} |"
        )
    text = "\n".join(lines) + "\n"
    atomic_write_text(HERE / "results" / f"{stem}.md", text)
    print(text)


if __name__ == "__main__":
    main()
