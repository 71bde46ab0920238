"""The eight-method comparison (Pi-model, Pseudo-Label, Mean Teacher, VAT, MixMatch, ReMixMatch, UDA, FixMatch) plus
Temporal Ensembling on Fashion-MNIST at 4, 10 and 25 labels per class, 3 seeds, with the labels-only and all-labels
rows: one `fewlabels benchmark` grid.

Every run gets the same budget: the same number of optimizer steps with the same batch (B labeled + mu*B unlabeled),
as the USB and TorchSSL tables compare methods; the report gives each method's wall time beside it, since a
MixMatch or ReMixMatch step costs more than a FixMatch one. A step budget, unlike a wall-clock one, does not depend
on what else the machine is doing, so cells trained in different sessions compare. The grid resumes where it
stopped; the run folders live in benchmarks/work/ (not committed) and the results are copied to
benchmarks/results/consistency/.

    python benchmarks/consistency.py                  # the whole protocol (resumable)
    python benchmarks/consistency.py --report-only    # refresh the committed report from finished runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from fewlabels.benchmark import read_results, run_benchmark, write_benchmark_report
from fewlabels.io import atomic_write_text

ALGORITHMS = [
    "pi_model",
    "pseudo_label",
    "mean_teacher",
    "vat",
    "mixmatch",
    "remixmatch",
    "uda",
    "fixmatch",
    "temporal_ensembling",
]
HERE = Path(__file__).parent
DIAGNOSTICS = ["pseudo_accuracy", "mask", "loss_l", "loss_u", "agreement"]


def diagnostics(workdir: Path) -> str:
    """Measured training signals per (algorithm, labels per class), means over seeds of each run's last log window:
    how often the unlabeled targets are right, how much of the unlabeled batch is used, and the losses."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in read_results(workdir / "results.csv"):
        metrics = [json.loads(line) for line in (workdir / row["run"] / "metrics.jsonl").read_text().splitlines()]
        train_rows = [m for m in metrics if m.get("kind") != "eval"]
        evals = [m for m in metrics if m.get("kind") == "eval"]
        last = dict(train_rows[-1]) if train_rows else {}
        if len(evals) >= 2:  # test accuracy gained over the last 40% of training: still rising or flat
            last["late_gain"] = evals[-1]["test_accuracy"] - evals[len(evals) * 3 // 5 - 1]["test_accuracy"]
        groups.setdefault((row["algorithm"], str(row["labels_per_class"])), []).append(last)
    cols = [*DIAGNOSTICS, "late_gain"]
    lines = [
        "# Training signals at the end of each run (means over seeds)",
        "",
        "pseudo_accuracy: accuracy of the unlabeled targets, weighted by their mask (the pool's true labels are "
        "known for Fashion-MNIST and used for this monitoring only); mask: mean weight of the unlabeled batch; "
        "loss_l / loss_u: labeled and unlabeled loss of the last log window; agreement: Mean Teacher's "
        "student-teacher argmax agreement; late_gain: test accuracy gained between the evaluation at 60% of the "
        "steps and the last one (points; > 0 means still improving when the budget ran out).",
        "",
        "| algorithm | labels/class | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    order = sorted(groups, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else 10**9))
    for algorithm, lpc in order:
        rows = groups[(algorithm, lpc)]
        cells = []
        for col in cols:
            values = [r[col] for r in rows if isinstance(r.get(col), int | float)]
            scale = 100 if col == "late_gain" else 1
            cells.append(f"{scale * statistics.mean(values):.3g}" if values else "")
        lines.append(f"| {algorithm} | {lpc} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of every run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--unlabeled-ratio", type=int, default=7)
    p.add_argument("--labels-per-class", type=int, nargs="+", default=[4, 10, 25])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--algorithms", nargs="+", default=ALGORITHMS)
    p.add_argument("--jobs", type=int, default=2, help="cells trained at once (separate processes)")
    p.add_argument("--workdir", default=str(HERE / "work" / "consistency"))
    p.add_argument("--results", default=str(HERE / "results" / "consistency"))
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    if args.report_only:
        result = write_benchmark_report(args.workdir)
    else:
        result = run_benchmark(
            args.workdir,
            dataset="fashion-mnist",
            algorithms=args.algorithms,
            labels_per_class=args.labels_per_class,
            seeds=args.seeds,
            overrides={
                "train.steps": args.steps,
                "train.budget": None,
                "train.batch_size": args.batch_size,
                "train.unlabeled_ratio": args.unlabeled_ratio,
                "train.eval_every": max(1, args.steps // 5),
                "train.log_every": max(1, args.steps // 20),
                "data.val_per_class": 50,
            },
            jobs=args.jobs,
            progress=True,
        )
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for path in (result.results_csv, result.report_md, result.plot_png):
        shutil.copyfile(path, results / path.name)
    atomic_write_text(results / "diagnostics.md", diagnostics(Path(args.workdir)))
    print(result.report_md.read_text())


if __name__ == "__main__":
    main()
