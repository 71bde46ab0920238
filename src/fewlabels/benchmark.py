"""Benchmark grids: algorithms x labels per class x seeds on one dataset, with one shared config.

Every cell is a normal run folder made by `fewlabels.train` (the one training engine). The layout of OUT::

    benchmark.json                      the grid: dataset, shared config, algorithm options, cells, environment
    runs/<algorithm>-<lpc>-s<seed>/     one run folder per cell, holding the cell's resolved config as cell.yaml
    runs/supervised-all-s<seed>/        the all-labels ceiling (supervised, every label), one per seed
    runs/<cell>.log                     a cell's output when run as a subprocess (jobs > 1), or a failed cell's error
    results.csv                         one row per finished run
    report.md                           mean ± std over seeds per (algorithm, labels per class), plus the header
    accuracy_vs_labels.png              test accuracy against labels per class, one line per algorithm

results.csv, report.md and the figure are rewritten atomically after every finished cell, so a partial grid always
has a consistent report; `write_benchmark_report(out)` rewrites them from the run folders without training.

Resuming and extending: a cell whose summary.json exists is skipped, a cell folder holding a checkpoint is resumed
from it, and any other (empty or broken) cell folder is restarted. A later call on the same OUT may add cells (more
algorithms, label budgets, seeds, or the ceiling); the stored grid becomes the union and the report covers all of
it. A call whose dataset, shared config (everything but the grid axes and display-only settings) or options of an
algorithm already in the grid differ is refused with a ConfigError naming the differences.

Classic baselines (`label_spreading`, `label_propagation`, `self_training`) are algorithms of the grid like any
other: each of their cells is one scikit-learn fit on the same split (0 steps), written as a normal run folder.

Model selection never looks at the test set: the figures are the final EMA model's test accuracy and the median of
its last `train.eval_last_k` test evaluations.
"""

from __future__ import annotations

import csv
import io
import json
import operator
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fewlabels.config import Config, model_settings, parse_assignment, parse_duration, resolve_config
from fewlabels.engine.stage import read_summary, resumable
from fewlabels.engine.trainer import train
from fewlabels.errors import ConfigError, FewLabelsError, check_options
from fewlabels.hardware import cpu_count, hardware_line, machine_environment
from fewlabels.io import atomic_write_bytes, atomic_write_text

FORMAT_VERSION = 1
BENCHMARK_JSON = "benchmark.json"
RESULTS_CSV = "results.csv"
REPORT_MD = "report.md"
PLOT_PNG = "accuracy_vs_labels.png"
CELL_YAML = "cell.yaml"
BASELINE = "supervised"
CEILING_LABEL = "supervised (all labels)"
FIELDS = [
    "dataset",
    "algorithm",
    "labels_per_class",
    "num_labels",
    "seed",
    "steps",
    "wall_seconds",
    "test_accuracy",
    "test_accuracy_median_last",
    "val_accuracy",
    "device",
    "run",
]
GRID_KEYS = frozenset(
    {
        "data.dataset",
        "data.labels_per_class",
        "data.num_labels",
        "algorithm.name",
        "train.seed",
        "train.progress",
        "out",
    }
)
"""Dotted config keys set by the benchmark itself; `overrides` may not contain them (nor any other algorithm.* key)."""
DISPLAY_KEYS = ("progress", "tensorboard", "device", "eval_batch_size")
"""train.* settings that do not change a trained model: they may differ between calls on the same OUT."""
LOG_TAIL_LINES = 12


@dataclass(frozen=True)
class Cell:
    """One run of the grid; `labels_per_class` None is the all-labels ceiling."""

    algorithm: str
    labels_per_class: int | None
    seed: int

    @property
    def is_ceiling(self) -> bool:
        return self.labels_per_class is None

    @property
    def name(self) -> str:
        """The run folder name: <algorithm>-<lpc>-s<seed>, or supervised-all-s<seed> for the ceiling."""
        return f"{self.algorithm}-{'all' if self.labels_per_class is None else self.labels_per_class}-s{self.seed}"

    def to_json(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "labels_per_class": self.labels_per_class, "seed": self.seed}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Cell:
        lpc = d["labels_per_class"]
        return cls(str(d["algorithm"]), None if lpc is None else int(lpc), int(d["seed"]))


@dataclass(frozen=True)
class CellSummary:
    """Mean and sample standard deviation (n - 1; None for one seed) over the seeds of one (algorithm, budget).

    Accuracies are fractions in [0, 1], as in summary.json; `labels_per_class` is "all" for the ceiling.
    """

    dataset: str
    algorithm: str
    labels_per_class: int | str
    num_labels: int | None
    seeds: tuple[int, ...]
    test_accuracy: float | None
    test_accuracy_std: float | None
    test_accuracy_median_last: float | None
    test_accuracy_median_last_std: float | None
    val_accuracy: float | None
    val_accuracy_std: float | None
    steps: float | None
    wall_seconds: float | None

    @property
    def n(self) -> int:
        """Number of finished seeds."""
        return len(self.seeds)

    @property
    def is_ceiling(self) -> bool:
        return self.labels_per_class == "all"


@dataclass(frozen=True)
class CellFailure:
    """A cell whose training failed: its name, exit code (None when it ran in this process) and log file."""

    name: str
    returncode: int | None
    log: Path
    tail: str

    def describe(self) -> str:
        how = f"exit code {self.returncode}" if self.returncode is not None else "raised in this process"
        tail = "\n".join("    " + line for line in self.tail.splitlines())
        return f"- {self.name} ({how}); log {self.log}:\n{tail}"


@dataclass
class BenchmarkResult:
    """What a benchmark folder holds: one row per finished run, the per-cell summaries, and the files."""

    out: Path
    rows: list[dict[str, Any]]
    summary: list[CellSummary]
    missing: list[str] = field(default_factory=list)
    """Cells of the stored grid without a finished run."""
    trained: list[str] = field(default_factory=list)
    """Cells trained from scratch by this call (restarted ones included)."""
    resumed: list[str] = field(default_factory=list)
    """Cells continued from their checkpoint by this call."""
    skipped: list[str] = field(default_factory=list)
    """Cells of this call's grid that had already finished."""
    failed: list[CellFailure] = field(default_factory=list)

    @property
    def benchmark_json(self) -> Path:
        return self.out / BENCHMARK_JSON

    @property
    def results_csv(self) -> Path:
        return self.out / RESULTS_CSV

    @property
    def report_md(self) -> Path:
        return self.out / REPORT_MD

    @property
    def plot_png(self) -> Path:
        return self.out / PLOT_PNG


class BenchmarkError(FewLabelsError, RuntimeError):
    """Some cells failed; the others finished and their results were written. `failures` and `result` tell which."""

    def __init__(self, message: str, failures: list[CellFailure], result: BenchmarkResult) -> None:
        super().__init__(message)
        self.failures = failures
        self.result = result


# ----------------------------------------------------------------------------------------------------------------
# Parsing and validation


def canonical_algorithm(name: str) -> str:
    """The registered name of a deep algorithm or a classic baseline ('pseudo-label' -> 'pseudo_label'); unknown
    names raise with close matches from both."""
    from fewlabels.algorithms.classic import resolve_algorithm_name

    return resolve_algorithm_name(name)


def parse_algorithm_option(text: str) -> tuple[str, str, Any]:
    """Parse 'ALGORITHM.OPTION=VALUE' (as given to `--option`), e.g. 'fixmatch.threshold=0.9' -> ('fixmatch',
    'threshold', 0.9). The value is read as a YAML scalar, like `--set`; the algorithm name is checked."""
    hint = "expects ALGORITHM.OPTION=VALUE, e.g. --option fixmatch.threshold=0.9"
    if "=" not in text:
        raise ConfigError(f"--option {hint}; got {text!r}")
    key, value = parse_assignment(text)
    algorithm, _, option = key.partition(".")
    if not algorithm.strip() or not option.strip() or "." in option:
        raise ConfigError(f"--option {hint}; got {text!r}")
    return canonical_algorithm(algorithm.strip()), option.strip().replace("-", "_"), value


def parse_algorithm_options(texts: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Collect several `--option` assignments into `algorithm_options` for `run_benchmark` (later ones win)."""
    options: dict[str, dict[str, Any]] = {}
    for text in texts:
        algorithm, key, value = parse_algorithm_option(text)
        options.setdefault(algorithm, {})[key] = value
    return options


def _int_list(values: Sequence[Any] | Any, what: str, minimum: int | None) -> list[int]:
    if isinstance(values, int | str):
        values = [values]
    out: list[int] = []
    for v in values:
        try:
            if isinstance(v, bool):
                raise TypeError
            number = int(v) if isinstance(v, str) else operator.index(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{what} must be whole numbers, got {v!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(f"{what} must be at least {minimum}, got {number}")
        if number not in out:
            out.append(number)
    if not out:
        raise ConfigError(f"{what} needs at least one value")
    return out


def _check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    flat = dict(overrides)
    for key in flat:
        if key == "algorithm" or key.startswith("algorithm."):
            raise ConfigError(
                f"override {key!r}: the benchmark sets each cell's algorithm; give algorithm options per algorithm "
                "instead (algorithm_options={'fixmatch': {'threshold': 0.9}}, or --option fixmatch.threshold=0.9)"
            )
        if key in GRID_KEYS:
            what = {
                "data.dataset": "the dataset argument",
                "data.labels_per_class": "labels_per_class",
                "data.num_labels": "labels_per_class (num_labels is not a benchmark axis)",
                "train.seed": "seeds",
                "train.progress": "progress",
                "out": "the benchmark's out folder (each cell gets OUT/runs/<cell>)",
            }[key]
            raise ConfigError(f"override {key!r} is set by the benchmark grid: use {what} instead")
    return flat


def _check_options(algorithm: str, options: Mapping[str, Any]) -> None:
    from fewlabels.algorithms import algorithm_options as valid_options
    from fewlabels.algorithms.classic import is_classic, make_classic

    if is_classic(algorithm):
        make_classic(algorithm, "vector", **options)  # checks the option names and values
        return
    check_options(algorithm, options, valid_options(algorithm))


def _cell_config(
    base: Config, dataset: str, cell: Cell, options: Mapping[str, Any], folder: Path, progress: bool
) -> Config:
    dotted: dict[str, Any] = {
        "data.dataset": dataset,
        "data.labels_per_class": cell.labels_per_class,
        "data.num_labels": None,
        "algorithm.name": cell.algorithm,
        "train.seed": cell.seed,
        "train.progress": progress,
        "out": str(folder),
    }
    dotted.update({f"algorithm.{k}": v for k, v in options.items()})
    return base.override(**dotted)


def _shared_settings(base: Config, dataset: str) -> dict[str, Any]:
    """The settings every cell shares: the resolved config less the grid axes, as JSON-able data."""
    cfg = base.override(**{"data.dataset": dataset, "data.labels_per_class": None, "data.num_labels": None})
    d = cfg.to_dict()
    for key in ("out", "algorithm"):
        d.pop(key, None)
    for key in ("seed", "progress"):
        d["train"].pop(key, None)
    return json.loads(json.dumps(d, default=str))


def _with_defaults(shared: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """Stored shared settings plus the current defaults of keys that `current` has and they lack."""
    defaults = json.loads(json.dumps(Config().to_dict(), default=str))

    def fill(d: Any, cur: Any, ref: Any) -> Any:
        if not isinstance(d, dict) or not isinstance(cur, dict) or not isinstance(ref, dict):
            return d
        missing = {k: ref[k] for k in cur if k not in d and k in ref}
        return {**missing, **{k: fill(v, cur.get(k), ref.get(k)) for k, v in d.items()}}

    return fill(shared, current, defaults)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            if prefix == "train." and key in DISPLAY_KEYS:
                continue
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _grid_order(cells: Iterable[Cell], algorithms: Sequence[str], seeds: Sequence[int]) -> list[Cell]:
    """Labels-only supervised first, then the algorithms in order, the ceiling last; budgets ascending."""
    algo_rank = {a: i for i, a in enumerate([BASELINE, *[a for a in algorithms if a != BASELINE]])}
    seed_rank = {s: i for i, s in enumerate(seeds)}

    def key(c: Cell) -> tuple:
        return (c.is_ceiling, algo_rank.get(c.algorithm, len(algo_rank)), c.labels_per_class or 0, seed_rank[c.seed])

    return sorted(dict.fromkeys(cells), key=key)


# ----------------------------------------------------------------------------------------------------------------
# The benchmark folder


def load_benchmark(out: str | Path) -> dict[str, Any]:
    """The grid description OUT/benchmark.json."""
    path = Path(out) / BENCHMARK_JSON
    if not path.is_file():
        raise ConfigError(f"{Path(out)} holds no {BENCHMARK_JSON}: pass the out folder of a benchmark")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise ConfigError(f"{path} has format {meta.get('format')!r}; this fewlabels reads format {FORMAT_VERSION}")
    return meta


def _merge_meta(old: dict[str, Any] | None, new: dict[str, Any], out: Path) -> dict[str, Any]:
    """Check that `new` only extends the stored grid `old`; return the union."""
    if old is None:
        return new
    where = out / BENCHMARK_JSON
    if old["dataset"] != new["dataset"]:
        raise ConfigError(
            f"{where} is a benchmark of dataset {old['dataset']!r}, not {new['dataset']!r}: choose another out folder"
        )
    # Settings added to the config schema after the grid was made read as their defaults (as a resumed run does).
    # Only what changes a trained model counts (as for a resumed run): logging, checkpoints, the data folder may move.
    diffs = _diff(model_settings(_with_defaults(old["config"], new["config"])), model_settings(new["config"]))
    old_train, new_train = old["config"].get("train", {}), new["config"].get("train", {})
    if new_train.get("budget") and old_train.get("device") != new_train.get("device"):
        # Under a wall-clock budget the device sets how many steps a cell makes: cells would not compare.
        diffs.append(f"train.device: {old_train.get('device')!r} -> {new_train.get('device')!r} under a budget")
    for algorithm in sorted(set(old["algorithm_options"]) & set(new["algorithm_options"])):
        a, b = old["algorithm_options"][algorithm], new["algorithm_options"][algorithm]
        diffs += [f"{algorithm} options: {a!r} -> {b!r}"] if a != b else []
    if diffs:
        raise ConfigError(
            f"{where} was made with different settings ({'; '.join(diffs)}): a later call may only add cells "
            "(algorithms, labels per class, seeds, the ceiling) with the same settings; choose another out folder "
            "for a different config"
        )
    algorithms = list(dict.fromkeys([*old["algorithms"], *new["algorithms"]]))
    seeds = list(dict.fromkeys([*old["seeds"], *new["seeds"]]))
    cells = [Cell.from_json(c) for c in [*old["cells"], *new["cells"]]]
    merged = dict(new)
    # The hardware stays that of the calls that trained; run_benchmark records this call's once it trains a cell.
    merged["environment"] = old.get("environment", new["environment"])
    merged.update(
        algorithms=algorithms,
        labels_per_class=sorted(set(old["labels_per_class"]) | set(new["labels_per_class"])),
        seeds=seeds,
        ceiling=bool(old["ceiling"] or new["ceiling"]),
        algorithm_options={**old["algorithm_options"], **new["algorithm_options"]},
        cells=[c.to_json() for c in _grid_order(cells, algorithms, seeds)],
        created=old.get("created", new["created"]),
    )
    return merged


def _subprocess_threads(jobs: int) -> int:
    """Threads per parallel cell: OMP_NUM_THREADS when the user set it, else the CPUs shared evenly."""
    given = os.environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else max(1, cpu_count() // jobs)


def _row(dataset: str, cell: Cell, summary: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "algorithm": cell.algorithm,
        "labels_per_class": "all" if cell.is_ceiling else cell.labels_per_class,
        "num_labels": summary.get("num_labels"),
        "seed": cell.seed,
        "steps": summary.get("steps"),
        "wall_seconds": summary.get("wall_seconds"),
        "test_accuracy": summary.get("test_accuracy"),
        "test_accuracy_median_last": summary.get("test_accuracy_median_last"),
        "val_accuracy": summary.get("val_accuracy"),
        "device": summary.get("device"),
        "run": f"runs/{cell.name}",
    }


# ----------------------------------------------------------------------------------------------------------------
# Results, summaries, report


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a results.csv with their types restored (numbers, None for empty, 'all' for the ceiling)."""
    rows = []
    with Path(path).open(newline="") as f:
        for r in csv.DictReader(f):
            row: dict[str, Any] = dict(r)
            for key in ("num_labels", "seed", "steps"):
                row[key] = int(r[key]) if r[key] else None
            for key in ("wall_seconds", "test_accuracy", "test_accuracy_median_last", "val_accuracy"):
                row[key] = float(r[key]) if r[key] else None
            lpc = r["labels_per_class"]
            row["labels_per_class"] = lpc if lpc == "all" else int(lpc)
            rows.append(row)
    return rows


def _mean_std(values: Iterable[Any]) -> tuple[float | None, float | None]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def summarize(rows: Iterable[Mapping[str, Any]]) -> list[CellSummary]:
    """Mean and sample std over seeds per (dataset, algorithm, labels_per_class), in the rows' order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["algorithm"], r["labels_per_class"]), []).append(r)
    out = []
    for (dataset, algorithm, lpc), rs in groups.items():
        test, test_std = _mean_std(r["test_accuracy"] for r in rs)
        med, med_std = _mean_std(r["test_accuracy_median_last"] for r in rs)
        val, val_std = _mean_std(r["val_accuracy"] for r in rs)
        out.append(
            CellSummary(
                dataset=dataset,
                algorithm=algorithm,
                labels_per_class=lpc,
                num_labels=next((r["num_labels"] for r in rs if r.get("num_labels") is not None), None),
                seeds=tuple(r["seed"] for r in rs),
                test_accuracy=test,
                test_accuracy_std=test_std,
                test_accuracy_median_last=med,
                test_accuracy_median_last_std=med_std,
                val_accuracy=val,
                val_accuracy_std=val_std,
                steps=_mean_std(r["steps"] for r in rs)[0],
                wall_seconds=_mean_std(r["wall_seconds"] for r in rs)[0],
            )
        )
    return out


def format_accuracy(mean: float | None, std: float | None) -> str:
    """'85.3 ± 1.2' (percent, one decimal); '85.3' for a single seed; '–' when missing."""
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" if std is None else f"{100 * mean:.1f} ± {100 * std:.1f}"


def _results_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in FIELDS})
    return buf.getvalue()


def _report_md(meta: dict[str, Any], rows: list[dict[str, Any]], summary: list[CellSummary], missing: list[str]) -> str:
    from fewlabels.algorithms.classic import is_classic

    cfg, env = meta["config"], meta.get("environment") or machine_environment(1, None)
    t = cfg["train"]
    seeds = meta["seeds"]
    budgets = meta["labels_per_class"]
    if t.get("budget"):
        training = f"a wall-clock budget of {t['budget']} per run (each run fits its step count to it)"
    else:
        training = f"{t['steps']} optimizer steps per run"
    model = cfg["model"]["name"] or "the dataset's default model"
    gpu = f"GPU {env['gpu']}" if env.get("gpu") else "no GPU"
    parallel = f", {env['jobs']} runs in parallel" if env.get("jobs", 1) > 1 else ""
    k = t.get("eval_last_k", 5)
    lines = [
        f"# Benchmark: {meta['dataset']}",
        "",
        f"- Dataset `{meta['dataset']}`; labels per class {', '.join(map(str, budgets))}"
        f"{' plus the all-labels ceiling' if meta['ceiling'] else ''}; seeds {', '.join(map(str, seeds))}.",
        f"- Every run: {training}; {model}; batch size {t['batch_size']}, unlabeled ratio {t['unlabeled_ratio']}; "
        f"evaluation every {t['eval_every']} steps. The shared config is in {BENCHMARK_JSON}, each run's in "
        "runs/<cell>/config.yaml.",
        f"- Hardware (of the latest call): {env['cpu']} ({env.get('cpu_count', '?')} CPUs), torch threads per run: "
        f"{env['torch_threads']}{parallel}, {gpu}; torch {env['torch']}.",
        "- Model selection uses the validation split only. The figures are the final EMA model's test accuracy and "
        f"the median of its last {k} test evaluations (median-last), never the best test accuracy seen.",
        "- Each entry: test accuracy / median-last, %, mean ± std (sample std) over seeds; (n=…) marks entries "
        "with fewer finished seeds than the grid. Wall time is the mean per run, in seconds.",
    ]
    classic = [a for a in meta["algorithms"] if is_classic(a)]
    if classic:
        lines.append(
            f"- Classic baselines ({', '.join(classic)}): one scikit-learn fit on features (images flattened to "
            "[0, 1], vectors standardized) on the same labeled rows and unlabeled pool; no steps, so median-last "
            "is the final accuracy."
        )
    lines.append("")
    by_key = {(s.algorithm, s.labels_per_class): s for s in summary}
    labels_of = {lpc: next((s.num_labels for s in summary if s.labels_per_class == lpc), None) for lpc in budgets}
    header = ["algorithm"] + [
        f"{lpc}/class ({labels_of[lpc]} labels)" if labels_of[lpc] is not None else f"{lpc}/class" for lpc in budgets
    ]
    ceiling = [s for s in summary if s.is_ceiling]
    if meta["ceiling"]:
        num = ceiling[0].num_labels if ceiling else None
        header.append(f"all labels ({num})" if num is not None else "all labels")
    header += ["steps", "wall (s)"]

    def entry(s: CellSummary | None) -> str:
        if s is None:
            return "–"
        text = (
            f"{format_accuracy(s.test_accuracy, s.test_accuracy_std)} / "
            f"{format_accuracy(s.test_accuracy_median_last, s.test_accuracy_median_last_std)}"
        )
        return text + (f" (n={s.n})" if s.n < len(seeds) else "")

    def tail(keys: list[tuple[str, Any]]) -> list[str]:
        runs = [r for r in rows if (r["algorithm"], r["labels_per_class"]) in keys]
        steps, wall = _mean_std(r["steps"] for r in runs)[0], _mean_std(r["wall_seconds"] for r in runs)[0]
        return ["–" if steps is None else f"{steps:.0f}", "–" if wall is None else f"{wall:.1f}"]

    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    algorithms = [BASELINE, *[a for a in meta["algorithms"] if a != BASELINE]]
    for algorithm in algorithms:
        cells = [entry(by_key.get((algorithm, lpc))) for lpc in budgets]
        if meta["ceiling"]:
            cells.append("")
        label = f"{algorithm} (labels only)" if algorithm == BASELINE else algorithm
        table.append("| " + " | ".join([label, *cells, *tail([(algorithm, lpc) for lpc in budgets])]) + " |")
    if meta["ceiling"]:
        s = ceiling[0] if ceiling else None
        cells = [""] * len(budgets) + [entry(s)]
        table.append("| " + " | ".join([CEILING_LABEL, *cells, *tail([(BASELINE, "all")])]) + " |")
    lines += table
    lines += ["", "![accuracy vs labels](accuracy_vs_labels.png)", ""]
    if missing:
        lines += [f"Not finished yet ({len(missing)}): {', '.join(missing)}.", ""]
    lines += [f"Per-run figures: {RESULTS_CSV}.", ""]
    return "\n".join(lines)


def _plot_png(meta: dict[str, Any], summary: list[CellSummary]) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    budgets = meta["labels_per_class"]
    algorithms = [BASELINE, *[a for a in meta["algorithms"] if a != BASELINE]]
    plotted = False
    drawn = [a for a in algorithms if any(s.algorithm == a and not s.is_ceiling for s in summary)]
    for algorithm in algorithms:
        points = [s for s in summary if s.algorithm == algorithm and not s.is_ceiling and s.test_accuracy is not None]
        points.sort(key=lambda s: s.labels_per_class)
        if not points:
            continue
        # A small multiplicative offset per algorithm keeps error bars at the same budget apart.
        shift = 1 + 0.02 * (drawn.index(algorithm) - (len(drawn) - 1) / 2) if algorithm in drawn else 1
        ax.errorbar(
            [s.labels_per_class * shift for s in points],
            [100 * s.test_accuracy for s in points],
            yerr=[100 * (s.test_accuracy_std or 0.0) for s in points],
            marker="o",
            capsize=3,
            label=f"{algorithm} (labels only)" if algorithm == BASELINE else algorithm,
        )
        plotted = True
    for s in summary:
        if s.is_ceiling and s.test_accuracy is not None:
            mean, std = 100 * s.test_accuracy, 100 * (s.test_accuracy_std or 0.0)
            ax.axhline(mean, color="black", linestyle="--", linewidth=1, label=f"{CEILING_LABEL}: {mean:.1f}%")
            if std:
                ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, linewidth=0)
            plotted = True
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(budgets)
    ax.set_xticklabels([str(b) for b in budgets])
    if len(budgets) == 1:
        ax.set_xlim(budgets[0] / 1.5, budgets[0] * 1.5)
    ax.set_xlabel("labels per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{meta['dataset']}: final EMA test accuracy, mean ± std over seeds", fontsize=10)
    ax.grid(True, alpha=0.3)
    if plotted:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", va="center")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def write_benchmark_report(out: str | Path) -> BenchmarkResult:
    """Rewrite OUT/results.csv, OUT/report.md and OUT/accuracy_vs_labels.png from the finished run folders of the
    grid in OUT/benchmark.json, without training anything (also useful after a partial or interrupted grid)."""
    out = Path(out)
    meta = load_benchmark(out)
    rows, missing = [], []
    for cell in (Cell.from_json(c) for c in meta["cells"]):
        summary = read_summary(out / "runs" / cell.name)
        if summary is None:
            missing.append(cell.name)
        else:
            rows.append(_row(meta["dataset"], cell, summary))
    summary = summarize(rows)
    atomic_write_text(out / RESULTS_CSV, _results_csv(rows))
    atomic_write_bytes(out / PLOT_PNG, _plot_png(meta, summary))
    atomic_write_text(out / REPORT_MD, _report_md(meta, rows, summary, missing))
    return BenchmarkResult(out=out, rows=rows, summary=summary, missing=missing)


# ----------------------------------------------------------------------------------------------------------------
# Running the grid


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"benchmark: {text}", file=sys.stderr, flush=True)


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"


def _prepare_cell(folder: Path, cfg: Config) -> bool:
    """Get a cell folder ready; return True to resume it from its checkpoint, False to train it afresh."""
    if resumable(folder):
        resume = True
    else:
        if folder.exists():
            shutil.rmtree(folder)  # empty or broken (no usable checkpoint): restart with the same seed
        resume = False
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / CELL_YAML, cfg.to_yaml())
    return resume


def _run_in_process(
    todo: list[tuple[Cell, Config, bool]], out: Path, progress: bool, on_done: Callable[[], None]
) -> list[CellFailure]:
    failures = []
    for i, (cell, cfg, resume) in enumerate(todo, 1):
        _say(progress, f"[{i}/{len(todo)}] {'resuming' if resume else 'training'} {cell.name}")
        try:
            train(cfg, resume=resume)
        except Exception:  # one failed cell must not lose the others: report it at the end
            log = out / "runs" / f"{cell.name}.log"
            with log.open("a") as f:
                f.write(f"=== {datetime.now(UTC).isoformat(timespec='seconds')} {cell.name} failed ===\n")
                f.write(traceback.format_exc())
            failures.append(CellFailure(cell.name, None, log, _log_tail(log)))
            _say(progress, f"{cell.name} failed; see {log}")
        on_done()
    return failures


def _run_subprocesses(
    todo: list[tuple[Cell, Config, bool]], out: Path, jobs: int, progress: bool, on_done: Callable[[], None]
) -> list[CellFailure]:
    threads = str(_subprocess_threads(jobs))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("MKL_NUM_THREADS", threads)
    pending = list(todo)
    running: dict[subprocess.Popen, tuple[Cell, Path, Any]] = {}
    failures: list[CellFailure] = []
    started = 0
    try:
        while pending or running:
            while pending and len(running) < jobs:
                cell, _, resume = pending.pop(0)
                folder = out / "runs" / cell.name
                cmd = [sys.executable, "-m", "fewlabels", "train", "--config", str(folder / CELL_YAML)]
                cmd += ["--out", str(folder), "--no-progress", *(["--resume"] if resume else [])]
                log = out / "runs" / f"{cell.name}.log"
                handle = log.open("a")
                handle.write(f"=== {datetime.now(UTC).isoformat(timespec='seconds')} {' '.join(cmd)}\n")
                handle.flush()
                proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
                running[proc] = (cell, log, handle)
                started += 1
                _say(progress, f"[{started}/{len(todo)}] {'resuming' if resume else 'training'} {cell.name}")
            finished = [p for p in running if p.poll() is not None]
            for proc in finished:
                cell, log, handle = running.pop(proc)
                handle.close()
                if proc.returncode != 0:
                    failures.append(CellFailure(cell.name, proc.returncode, log, _log_tail(log)))
                    _say(progress, f"{cell.name} failed (exit code {proc.returncode}); see {log}")
                else:
                    _say(progress, f"{cell.name} finished")
                on_done()
            if not finished:
                time.sleep(0.1)
    except BaseException:  # interrupted: stop the cells this call started, keep their checkpoints
        for proc in running:
            proc.terminate()
        for proc, (_, _, handle) in running.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            handle.close()
        raise
    return failures


def run_benchmark(
    out: str | Path,
    *,
    dataset: str,
    algorithms: Sequence[str],
    labels_per_class: Sequence[int],
    seeds: Sequence[int],
    config: str | Path | Mapping[str, Any] | Config | None = None,
    overrides: Mapping[str, Any] | None = None,
    algorithm_options: Mapping[str, Mapping[str, Any]] | None = None,
    ceiling: bool = True,
    jobs: int = 1,
    progress: bool = False,
) -> BenchmarkResult:
    """Train the grid algorithms x labels_per_class x seeds on `dataset` into OUT/runs/ and write the report.

    `config` (a YAML path, nested dict or Config) plus dotted `overrides` (e.g. {'train.steps': 2000}) is the config
    every cell shares; the grid sets data.dataset, data.labels_per_class, algorithm.name, train.seed and out itself,
    so those keys (and algorithm options) are refused in `overrides`. `algorithm_options` maps an algorithm to its
    options ({'fixmatch': {'threshold': 0.9}}), applied to that algorithm's cells only (options in a config file's
    algorithm section likewise apply only to cells of the algorithm it names). `supervised` (labels only) is always
    part of the grid; `ceiling` adds a supervised run on every label per seed.

    Everything is validated before anything trains. Finished cells are skipped, interrupted ones resumed from their
    checkpoint. `jobs` > 1 trains that many cells at a time as `python -m fewlabels train` subprocesses (output in
    OUT/runs/<cell>.log, OMP_NUM_THREADS = CPUs // jobs unless set); `jobs` = 1 trains in this process. A failed cell
    does not stop the others: after they finish, the results are written and a BenchmarkError names each failed cell,
    its exit code and the tail of its log. A rerun of the same call retries the failed cells.
    """
    out = Path(out).absolute()
    if not isinstance(dataset, str) or not dataset.strip():
        raise ConfigError(f"dataset must be a dataset name or path, got {dataset!r}")
    if isinstance(algorithms, str):
        algorithms = [algorithms]
    algos = list(dict.fromkeys(canonical_algorithm(a) for a in algorithms))
    if BASELINE not in algos:
        algos.insert(0, BASELINE)
    budgets = sorted(_int_list(labels_per_class, "labels_per_class", 1))
    seed_list = _int_list(seeds, "seeds", None)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a whole number >= 1, got {jobs!r}")
    options: dict[str, dict[str, Any]] = {}
    for name, opts in (algorithm_options or {}).items():
        algorithm = canonical_algorithm(name)
        if algorithm not in algos:
            raise ConfigError(
                f"options given for algorithm {algorithm!r}, which is not in the grid ({', '.join(algos)}): "
                "add it to the algorithms or drop its options"
            )
        if not isinstance(opts, Mapping):
            raise ConfigError(f"the options of {algorithm!r} must be a mapping of option -> value, got {opts!r}")
        options.setdefault(algorithm, {}).update({str(k).replace("-", "_"): v for k, v in opts.items()})
    base = resolve_config(config, **_check_overrides(overrides or {}))
    if base.train.budget:
        parse_duration(base.train.budget)
    elif base.train.steps is None:
        raise ConfigError("set train.steps (N >= 1) or train.budget (e.g. 15m) for the benchmark's runs")

    cells = [Cell(a, lpc, s) for a in algos for lpc in budgets for s in seed_list]
    if ceiling:
        cells += [Cell(BASELINE, None, s) for s in seed_list]
    cells = _grid_order(cells, algos, seed_list)
    runs = out / "runs"
    configs: dict[Cell, Config] = {}
    effective: dict[str, dict[str, Any]] = {}
    cell_progress = progress and jobs == 1  # subprocesses run without a progress bar
    for cell in cells:
        cfg = _cell_config(base, dataset, cell, options.get(cell.algorithm, {}), runs / cell.name, cell_progress)
        _check_options(cell.algorithm, cfg.algorithm.options)
        configs[cell] = cfg
        effective[cell.algorithm] = json.loads(json.dumps(dict(cfg.algorithm.options), default=str))

    threads = _subprocess_threads(jobs) if jobs > 1 else None
    now = datetime.now(UTC).isoformat(timespec="seconds")
    meta = {
        "format": FORMAT_VERSION,
        "dataset": dataset,
        "algorithms": algos,
        "labels_per_class": budgets,
        "seeds": seed_list,
        "ceiling": bool(ceiling),
        "algorithm_options": effective,
        "config": _shared_settings(base, dataset),
        "cells": [c.to_json() for c in cells],
        "environment": machine_environment(jobs, threads),
        "created": now,
        "updated": now,
    }
    old = None
    if (out / BENCHMARK_JSON).exists():
        old = load_benchmark(out)
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no {BENCHMARK_JSON}: choose a new or empty out folder")
    environment = meta["environment"]
    meta = _merge_meta(old, meta, out)
    runs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / BENCHMARK_JSON, json.dumps(meta, indent=2))

    todo: list[tuple[Cell, Config, bool]] = []
    skipped, trained, resumed = [], [], []
    for cell in cells:
        folder = runs / cell.name
        if read_summary(folder) is not None:
            skipped.append(cell.name)
            continue
        resume = _prepare_cell(folder, configs[cell])
        (resumed if resume else trained).append(cell.name)
        todo.append((cell, configs[cell], resume))
    _say(progress, f"{len(cells)} cells: {len(skipped)} finished, {len(resumed)} to resume, {len(trained)} to train")
    if todo and meta["environment"] != environment:  # this call trains: the report names its hardware
        meta["environment"] = environment
        atomic_write_text(out / BENCHMARK_JSON, json.dumps(meta, indent=2))

    def on_done() -> None:
        write_benchmark_report(out)

    if not todo:
        failures = []
    elif jobs == 1:
        failures = _run_in_process(todo, out, progress, on_done)
    else:
        failures = _run_subprocesses(todo, out, jobs, progress, on_done)
    result = write_benchmark_report(out)
    result.trained, result.resumed, result.skipped, result.failed = trained, resumed, skipped, failures
    if failures:
        done = len(todo) - len(failures)
        raise BenchmarkError(
            f"{len(failures)} of {len(todo)} benchmark cells failed ({done} finished; the results of every finished "
            f"cell are in {result.results_csv} and {result.report_md}); rerun the same call to retry them:\n"
            + "\n".join(f.describe() for f in failures),
            failures,
            result,
        )
    return result


__all__ = [
    "BenchmarkError",
    "BenchmarkResult",
    "Cell",
    "CellFailure",
    "CellSummary",
    "FIELDS",
    "GRID_KEYS",
    "canonical_algorithm",
    "format_accuracy",
    "hardware_line",
    "load_benchmark",
    "parse_algorithm_option",
    "parse_algorithm_options",
    "read_results",
    "run_benchmark",
    "summarize",
    "write_benchmark_report",
]
