"""The main job on a built-in dataset: labels only vs FixMatch, same model and budget, printed as a table.

python examples/demo.py                       # Fashion-MNIST, 10 labels per class, about 5 minutes on 2 cores
python examples/demo.py --dataset digits --labels-per-class 4 --budget 30s
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import fewlabels
from fewlabels.benchmark import hardware_line
from fewlabels.io import atomic_write_text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--budget", default="2m", help="wall-clock budget of each of the two runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--results", help="also write the table as markdown to this file")
    args = p.parse_args()

    rows = []
    for algorithm in ("supervised", "fixmatch"):
        out = Path(args.out) / algorithm
        shutil.rmtree(out, ignore_errors=True)
        print(f"training {algorithm} on {args.dataset} with {args.labels_per_class} labels per class ({args.budget})")
        run = fewlabels.train(
            **{
                "data.dataset": args.dataset,
                "data.labels_per_class": args.labels_per_class,
                "algorithm.name": algorithm,
                "train.budget": args.budget,
                "train.steps": None,
                "train.seed": args.seed,
                "out": str(out),
            }
        )
        rows.append((algorithm, run.summary))

    lines = [
        f"| {'algorithm':10s} | labels | steps | test accuracy | median of last evals | wall (s) |",
        f"|{'-' * 12}|--------|-------|---------------|----------------------|----------|",
    ]
    for algorithm, s in rows:
        lines.append(
            f"| {algorithm:10s} | {s['num_labels']:6d} | {s['steps']:5d} | {100 * s['test_accuracy']:12.1f}% "
            f"| {100 * s['test_accuracy_median_last']:19.1f}% | {s['wall_seconds']:8.0f} |"
        )
    gain = 100 * (rows[1][1]["test_accuracy"] - rows[0][1]["test_accuracy"])
    verdict = f"gains {gain:.1f} points over" if gain >= 0 else f"is {-gain:.1f} points below"
    lines.append(f"\nFixMatch {verdict} labels-only training.")
    table = "\n".join(lines)
    print("\n" + table + f"\nRun folders: {args.out}/ (see `fewlabels evaluate {args.out}/fixmatch`).")
    if args.results:
        header = (
            f"# make demo\n\n{args.dataset}, {args.labels_per_class} labels per class, seed {args.seed}, "
            f"budget {args.budget} per run; hardware: {hardware_line()}.\n\n"
        )
        atomic_write_text(args.results, header + table + "\n")


if __name__ == "__main__":
    main()
