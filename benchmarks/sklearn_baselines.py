"""The scikit-learn estimator against the classic tools at equal label budgets: fewlabels' SemiSupervisedClassifier
(FixMatch) against scikit-learn's LabelSpreading and SelfTrainingClassifier and against supervised-only models, on
digits, breast_cancer, wine and Fashion-MNIST, 4 and 10 labels per class, seeds 0-2. Test accuracy and wall time.

Every method of a (dataset, labels per class, seed) cell gets the same labeled rows (fewlabels' seeded stratified
split) and the same unlabeled rows (the rest of the training set, labels set to -1), through the estimator's
`fit(X, y)`. The classic methods run inside the estimator too (`algorithm="label_spreading"` wraps scikit-learn's
LabelSpreading), and `logistic_regression` is scikit-learn's LogisticRegression on the labeled rows alone.

    python benchmarks/sklearn_baselines.py                          # the whole protocol (resumable)
    python benchmarks/sklearn_baselines.py --datasets wine --seeds 0  # a quick look

Writes benchmarks/results/sklearn_baselines.{csv,md}; rows already in the CSV are not run again.
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fewlabels import SemiSupervisedClassifier, load_dataset
from fewlabels.benchmark import hardware_line
from fewlabels.data import make_split
from fewlabels.io import atomic_write_text

HERE = Path(__file__).parent
DATASETS = ["digits", "breast_cancer", "wine", "fashion-mnist"]
METHODS = ["fixmatch", "supervised", "logistic_regression", "label_spreading", "self_training"]
LABELS = {
    "fixmatch": "fewlabels FixMatch (estimator)",
    "supervised": "fewlabels supervised, same network",
    "logistic_regression": "LogisticRegression, labels only",
    "label_spreading": "LabelSpreading (knn)",
    "self_training": "SelfTrainingClassifier (LogisticRegression)",
}
FIELDS = ["dataset", "labels_per_class", "seed", "method", "test_accuracy", "wall_seconds", "num_labels", "steps"]


def fit(method: str, x: np.ndarray, y: np.ndarray, steps: int, seed: int, hflip: bool) -> tuple[object, int]:
    """A fitted classifier for `method` and its optimizer steps (0 for the classic ones). `hflip`: the dataset's own
    flip setting (Fashion-MNIST allows flips, digits does not), as `fewlabels train` uses it."""
    if method == "logistic_regression":
        flat = x.reshape(len(x), -1).astype(np.float32)
        keep = y >= 0
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(flat[keep], y[keep]), 0
    clf = SemiSupervisedClassifier(
        method, steps=steps, batch_size=32, unlabeled_ratio=7, random_state=seed, hflip=hflip
    )
    clf.fit(x, y)
    return clf, (steps if method in ("fixmatch", "supervised") else 0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=DATASETS)
    p.add_argument("--labels-per-class", type=int, nargs="+", default=[4, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps of the fewlabels estimators")
    p.add_argument("--results", type=Path, default=HERE / "results" / "sklearn_baselines", help="output stem")
    p.add_argument("--report-only", action="store_true", help="rewrite the markdown from the CSV")
    args = p.parse_args()
    csv_path = args.results.with_suffix(".csv")
    rows = list(csv.DictReader(csv_path.open())) if csv_path.exists() else []
    other = sorted({r["steps"] for r in rows if r["method"] in ("fixmatch", "supervised")} - {str(args.steps)})
    if other:  # the summary states one step count; rows of another would be averaged in under it
        raise SystemExit(
            f"{csv_path} holds fewlabels fits of {', '.join(other)} steps, not --steps {args.steps}: pass "
            f"--steps {other[0]}, or write elsewhere with --results"
        )
    if args.report_only:
        write(rows, args.results, args)
        return
    done = {(r["dataset"], r["labels_per_class"], r["seed"], r["method"]) for r in rows}

    for name in args.datasets:
        bundle = load_dataset(name)
        x = bundle.x_train.numpy()
        x_test, y_test = bundle.x_test.numpy(), bundle.y_test.numpy()
        for k in args.labels_per_class:
            for seed in args.seeds:
                split = make_split(bundle, labels_per_class=k, val_per_class=0, seed=seed)
                y = np.full(len(x), -1, dtype=np.int64)
                labeled = np.asarray(split.labeled)
                y[labeled] = bundle.y_train.numpy()[labeled]
                for method in args.methods:
                    key = (name, str(k), str(seed), method)
                    if key in done:
                        continue
                    start = time.perf_counter()
                    clf, steps = fit(method, x, y, args.steps, seed, bundle.hflip)
                    flat_test = x_test.reshape(len(x_test), -1) if method == "logistic_regression" else x_test
                    acc = float(np.mean(clf.predict(flat_test) == y_test))
                    wall = time.perf_counter() - start
                    row = dict(
                        zip(
                            FIELDS,
                            [name, k, seed, method, f"{acc:.4f}", f"{wall:.1f}", len(labeled), steps],
                            strict=True,
                        )
                    )
                    rows.append({f: str(v) for f, v in row.items()})
                    done.add(key)
                    print(f"{name} {k}/class seed {seed} {method}: {100 * acc:.1f}% in {wall:.1f}s", flush=True)
                    write(rows, args.results, args)


def write(rows: list[dict[str, str]], stem: Path, args: argparse.Namespace) -> None:
    """The CSV (one row per fit) and the markdown summary (mean +- std over seeds), atomically."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())

    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["labels_per_class"], r["method"]), []).append(r)
    budgets = sorted({r["labels_per_class"] for r in rows}, key=int)
    seeds = sorted({r["seed"] for r in rows}, key=int)
    lines = [
        "# The fewlabels estimator against scikit-learn's semi-supervised tools",
        "",
        f"- Hardware: {hardware_line()}.",
        f"- Seeds {', '.join(seeds)}; every method of a cell gets the same labeled rows (fewlabels' seeded stratified "
        "split, no validation split) and the rest of the training set unlabeled (y = -1).",
        f"- fewlabels estimators: {args.steps} optimizer steps, batch 32 labeled + 7x32 unlabeled, the `auto` model "
        "(`mlp` for the tables wine and breast_cancer, `cnn` for the images of digits and Fashion-MNIST), the final "
        "EMA model, horizontal flips where the dataset allows them (Fashion-MNIST). LabelSpreading: knn kernel, 7 "
        "neighbours, alpha 0.2, standardised features (pixels scaled to [0, 1]); SelfTrainingClassifier: "
        "LogisticRegression(max_iter=1000), threshold 0.75. LogisticRegression, labels only: standardised features.",
        "- Entries: test accuracy (%), mean ± std over seeds (n=… where fewer seeds finished); wall time per fit "
        "(seconds, mean), training and prediction. Each fit used one torch thread (OMP_NUM_THREADS=1) while other "
        "benchmarks shared the two cores, so compare wall times within a table only.",
        "",
    ]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        lines += [f"## {dataset}", "", "| method | " + " | ".join(f"{b}/class" for b in budgets) + " | wall (s) |"]
        lines.append("|---|" + "---|" * (len(budgets) + 1))
        for method in METHODS:
            cells, walls = [], []
            for b in budgets:
                group = groups.get((dataset, b, method), [])
                accs = [100 * float(r["test_accuracy"]) for r in group]
                walls += [float(r["wall_seconds"]) for r in group]
                if not accs:
                    cells.append("")
                    continue
                std = statistics.stdev(accs) if len(accs) > 1 else 0.0
                n = f" (n={len(accs)})" if len(accs) < len(seeds) else ""
                cells.append(f"{statistics.mean(accs):.1f} ± {std:.1f}{n}")
            if walls:
                lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + f" | {statistics.mean(walls):.1f} |")
        lines.append("")
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    main()
