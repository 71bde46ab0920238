"""A report of one training run folder: header figures, training curves, confusion matrix, per-class accuracy,
pseudo-label class histogram over time and the config, as self-contained HTML or as markdown plus PNG files.

Missing data (a supervised run has no pseudo-labels, a run without a test set has no confusion matrix, a run in
progress has no summary.json) leaves out the section with a short note; it never fails the report.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import yaml
from matplotlib.figure import Figure

from fewlabels.engine.run import Run
from fewlabels.errors import ConfigError
from fewlabels.io import atomic_write_bytes

FORMATS = ("html", "md")
# Curve panels: title and which training-row keys go in it ("loss*" is a prefix); leftovers go into "Other".
PANELS = [
    ("Losses", "loss*"),
    ("Mask rate", "mask"),
    ("Pseudo-label accuracy", "pseudo_accuracy"),
    ("Learning rate", "lr"),
    ("Data / step time (s)", "data_time step_time"),
]


@dataclass
class Section:
    """A titled report section made of blocks: ("text"|"note"|"code", str), ("figure", file, alt), ("table", ...)."""

    title: str
    blocks: list[tuple] = field(default_factory=list)


def write_report(run: str | Path, out: str | Path | None = None, fmt: str = "html") -> Path:
    """Write report.html (self-contained, figures embedded) or report.md (figures linked) for the run folder `run`.

    The PNG figures are written next to the report, into `out` (default RUN/report/). Returns the report's path.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown report format {fmt!r}: use one of {', '.join(FORMATS)}")
    path = Path(run)
    if not path.is_dir():
        raise ConfigError(f"run folder {str(path)!r} does not exist: pass the --out folder of a training run")
    r = Run(path)  # raises ConfigError without config.yaml
    try:
        config_text = (path / "config.yaml").read_text()
        config = yaml.safe_load(config_text) or {}
        summary = r.summary
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable fewlabels run folder: {exc}") from exc
    rows = _read_metrics(path / "metrics.jsonl")
    train_rows = [row for row in rows if row.get("kind") != "eval"]
    eval_rows = [row for row in rows if row.get("kind") == "eval"]
    classes = _classes(path)

    figures: dict[str, bytes] = {}

    def figure(name: str, alt: str, fig: Figure) -> tuple:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        figures[f"{name}.png"] = buf.getvalue()
        return ("figure", f"{name}.png", alt)

    sections = [_header(summary, config, train_rows)]

    curves = Section("Training curves")
    fig = _curves_figure(train_rows, eval_rows)
    curves.blocks.append(figure("curves", "Training curves", fig) if fig else ("note", "No metrics were logged yet."))
    sections.append(curves)

    unfinished = "The run has not finished (no summary.json), so there are no final test figures yet."
    confusion = Section("Confusion matrix (test set)")
    per_class = Section("Per-class test accuracy")
    matrix, accuracy = summary.get("confusion_matrix"), summary.get("per_class_test_accuracy")
    if not summary:
        confusion.blocks.append(("note", unfinished))
        per_class.blocks.append(("note", unfinished))
    if summary and matrix is None:
        confusion.blocks.append(("note", "The run had no test set, so there is no confusion matrix."))
    if summary and accuracy is None:
        per_class.blocks.append(("note", "The run had no test set, so there is no per-class test accuracy."))
    counts = np.asarray(matrix, dtype=float) if matrix is not None else None
    if counts is not None:
        names = _names(classes, len(counts))
        confusion.blocks.append(
            figure("confusion", "Row-normalised confusion matrix", _confusion_figure(counts, names))
        )
    if accuracy is not None:
        names = _names(classes, len(accuracy))
        per_class.blocks.append(figure("per_class", "Per-class test accuracy", _per_class_figure(accuracy, names)))
        support = counts.sum(1).astype(int).tolist() if counts is not None else ["—"] * len(accuracy)
        table = [[name, _pct(a, 1) or "—", str(n)] for name, a, n in zip(names, accuracy, support, strict=False)]
        per_class.blocks.append(("table", ["Class", "Test accuracy", "Test examples"], table))
    sections += [confusion, per_class]

    pseudo = Section("Pseudo-label class histogram")
    hist_rows = [row for row in train_rows if isinstance(row.get("pseudo_histogram"), list)]
    hist_rows = [row for row in hist_rows if len(row["pseudo_histogram"]) == len(hist_rows[-1]["pseudo_histogram"])]
    if hist_rows and hist_rows[-1]["pseudo_histogram"]:
        steps = np.array([row["step"] for row in hist_rows])
        hist = np.array([row["pseudo_histogram"] for row in hist_rows], dtype=float)
        prior, prior_name = (counts.sum(1) / counts.sum(), "test-set class prior") if counts is not None else (None, "")
        if prior is None or len(prior) != hist.shape[1]:
            prior, prior_name = np.full(hist.shape[1], 1 / hist.shape[1]), "uniform class prior"
        names = _names(classes, hist.shape[1])
        text = "Class fractions of the kept pseudo-labels per logged window (blank: none kept); "
        text += f"dashed lines: {prior_name} boundaries."
        pseudo.blocks.append(("text", text))
        fig = _pseudo_figure(steps, hist, names, prior)
        pseudo.blocks.append(figure("pseudo_histogram", "Pseudo-label class fractions over training steps", fig))
    else:
        pseudo.blocks.append(("note", "No pseudo-labels were logged: this algorithm does not make them."))
    sections += [pseudo, Section("Config", [("code", config_text)])]

    out_dir = Path(out) if out is not None else path / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in figures.items():
        atomic_write_bytes(out_dir / name, data)
    title = f"fewlabels report: {path.resolve().name}"
    text = _html(title, sections, figures) if fmt == "html" else _markdown(title, sections)
    report = out_dir / f"report.{fmt}"
    atomic_write_bytes(report, text.encode("utf-8"))
    return report


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a partly written last line of a run in progress is skipped."""
    rows = []
    lines = path.read_text().splitlines() if path.exists() else []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int | float):
            rows.append(row)
    return rows


def _classes(path: Path) -> list[str] | None:
    """Class names from model.json (or best.json while the run is in progress), else None."""
    for name in ("model.json", "best.json"):
        try:
            return [str(c) for c in json.loads((path / name).read_text())["classes"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _names(classes: list[str] | None, k: int) -> list[str]:
    """The class names when they match the k classes of the data, else "0".."k-1"."""
    return classes if classes is not None and len(classes) == k else [str(i) for i in range(k)]


def _header(summary: dict[str, Any], config: dict[str, Any], train_rows: list[dict[str, Any]]) -> Section:
    section = Section("Run")
    if summary:
        labels = f"{summary.get('num_labels', '?')} labeled, {summary.get('num_unlabeled', '?')} unlabeled"
        wall = summary.get("wall_seconds")
        items = [
            ("Algorithm", summary.get("algorithm")),
            ("Dataset", summary.get("dataset")),
            ("Model", summary.get("model")),
            ("Labels", labels),
            ("Seed", summary.get("seed")),
            ("Steps", summary.get("steps")),
            ("Wall time", _duration(wall) if isinstance(wall, int | float) else None),
            ("Final test accuracy", _pct(summary.get("test_accuracy"))),
            ("Test accuracy, median of last evaluations", _pct(summary.get("test_accuracy_median_last"))),
            ("Validation accuracy", _pct(summary.get("val_accuracy"))),
        ]
    else:
        sub = {k: v if isinstance(v, dict) else {} for k, v in config.items()}
        algorithm = config.get("algorithm")
        last = train_rows[-1]["step"] if train_rows else 0
        items = [
            ("Algorithm", algorithm.get("name") if isinstance(algorithm, dict) else algorithm),
            ("Dataset", sub.get("data", {}).get("dataset")),
            ("Model", sub.get("model", {}).get("name") or "dataset default"),
            ("Labels per class", sub.get("data", {}).get("labels_per_class")),
            ("Seed", sub.get("train", {}).get("seed")),
            ("Steps logged", f"{last} of {sub.get('train', {}).get('steps') or '?'}"),
        ]
        section.blocks.append(("note", "The run has not finished (no summary.json): figures cover the logged steps."))
    rows = [[name, "—" if value is None else str(value)] for name, value in items]
    section.blocks.insert(0, ("table", ["", ""], rows))
    return section


def _curves_figure(train_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]]) -> Figure | None:
    """One panel per group of curves; None when nothing was logged."""
    keys = [k for row in train_rows for k, v in row.items() if _number(v) and k != "step"]
    keys = list(dict.fromkeys(keys))
    panels: list[tuple[str, list[dict[str, Any]], list[str]]] = []
    for title, spec in PANELS:
        wanted = [k for k in keys if (k.startswith(spec[:-1]) if spec.endswith("*") else k in spec.split())]
        panels.append((title, train_rows, wanted))
        keys = [k for k in keys if k not in wanted]
    panels.insert(1, ("Accuracy (EMA model)", eval_rows, ["val_accuracy", "test_accuracy"]))
    panels.append(("Other", train_rows, keys))
    panels = [(t, rows, ks) for t, rows, ks in panels if any(_number(row.get(k)) for row in rows for k in ks)]
    if not panels:
        return None
    ncols = 2 if len(panels) > 1 else 1
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(5.5 * ncols, 3.2 * nrows), layout="constrained")
    for i, (title, rows, ks) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        for k in ks:
            points = [(row["step"], row[k]) for row in rows if _number(row.get(k))]
            if points:
                ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=k)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def _confusion_figure(counts: np.ndarray, names: list[str]) -> Figure:
    k = len(counts)
    norm = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = min(max(4.5, 0.45 * k + 2), 16)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if k <= 40:
        ax.set_xticks(range(k), names, rotation=90 if k > 10 or max(map(len, names)) > 3 else 0)
        ax.set_yticks(range(k), names)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                color = "white" if norm[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=color, fontsize="small")
    ax.set(xlabel="predicted class", ylabel="true class")
    return fig


def _per_class_figure(accuracy: list[float | None], names: list[str]) -> Figure:
    values = np.array([np.nan if a is None else a for a in accuracy], dtype=float)  # None: class not in the test set
    fig = Figure(figsize=(min(max(5.0, 0.35 * len(accuracy) + 2), 18), 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(values)), np.nan_to_num(values), color="tab:blue")
    ax.axhline(float(np.nanmean(values)), color="tab:red", linestyle="--", label="mean over classes")
    if len(accuracy) <= 60:
        ax.set_xticks(range(len(accuracy)), names, rotation=90 if len(accuracy) > 10 else 0)
    ax.set(ylim=(0, 1), ylabel="test accuracy", xlabel="class")
    ax.legend(fontsize="small")
    return fig


def _pseudo_figure(steps: np.ndarray, hist: np.ndarray, names: list[str], prior: np.ndarray) -> Figure:
    """Stacked class fractions; each logged row covers the steps since the previous row (blank: none kept)."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    first = steps[0] - (steps[1] - steps[0] if len(steps) > 1 else 1)
    x, y = np.concatenate([[first], steps]), np.vstack([hist[:1], hist]).T
    k = len(names)
    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "viridis"]
    colors = [cmap(i if k <= 20 else i / max(k - 1, 1)) for i in range(k)]
    ax.stackplot(x, y, labels=names if k <= 20 else (), colors=colors, step="pre", alpha=0.85)
    for level in np.cumsum(prior)[:-1]:
        ax.axhline(level, color="black", linestyle="--", linewidth=0.7)
    ax.set(xlabel="step", ylabel="fraction of pseudo-labels", ylim=(0, 1), xlim=(x[0], x[-1]))
    if k <= 20:
        ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _html(title: str, sections: list[Section], figures: dict[str, bytes]) -> str:
    parts = [f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    for s in sections:
        parts.append(f"<section><h2>{html.escape(s.title)}</h2>")
        for kind, *rest in s.blocks:
            if kind in ("text", "note"):
                parts.append(f"<p class='{kind}'>{html.escape(rest[0])}</p>")
            elif kind == "code":
                parts.append(f"<pre><code>{html.escape(rest[0])}</code></pre>")
            elif kind == "figure":
                data = base64.b64encode(figures[rest[0]]).decode("ascii")
                parts.append(f"<img alt='{html.escape(rest[1])}' src='data:image/png;base64,{data}'>")
            elif kind == "table":
                head = "".join(f"<th>{html.escape(h)}</th>" for h in rest[0]) if any(rest[0]) else ""
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rest[1])
                parts.append(f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>")
        parts.append("</section>")
    return "\n".join(parts) + "\n</body></html>\n"


def _markdown(title: str, sections: list[Section]) -> str:
    def cell(text: str) -> str:
        return html.escape(text.replace("\\", "\\\\")).replace("|", "\\|").replace("\n", " ")

    parts = [f"# {title}"]
    for s in sections:
        parts.append(f"## {s.title}")
        for kind, *rest in s.blocks:
            if kind == "text":
                parts.append(rest[0])
            elif kind == "note":
                parts.append(f"> {rest[0]}")
            elif kind == "code":
                parts.append(f"```yaml\n{rest[0].rstrip()}\n```")
            elif kind == "figure":
                parts.append(f"![{rest[1]}]({rest[0]})")
            elif kind == "table":
                lines = ["| " + " | ".join(cell(h) for h in rest[0]) + " |", "|" + "---|" * len(rest[0])]
                lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rest[1]]
                parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _pct(v: Any, digits: int = 2) -> str | None:
    return f"{100 * v:.{digits}f}%" if _number(v) else None


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}"
    "img{max-width:100%;height:auto}pre{background:#f5f5f5;padding:1em;overflow:auto}"
    ".note{color:#666;font-style:italic}"
)
