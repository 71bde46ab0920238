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
import shutil
from pathlib import Path

from fewlabels.benchmark import run_benchmark, write_benchmark_report

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
    print(result.report_md.read_text())


if __name__ == "__main__":
    main()
