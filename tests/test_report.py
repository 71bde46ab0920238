"""`fewlabels.report.write_report` on real short runs: figures, tables and notes must match the run folder's files."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
from pathlib import Path

import matplotlib.image
import pytest

import fewlabels
from fewlabels.errors import ConfigError
from fewlabels.report import write_report

SETTINGS = {
    "data.dataset": "digits",
    "data.labels_per_class": 4,
    "train.steps": 12,
    "train.eval_every": 6,
    "train.log_every": 3,
    "train.checkpoint_every": 1000,
    "train.batch_size": 16,
    "train.unlabeled_ratio": 1,
    "train.progress": False,
    "train.seed": 0,
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r"<img alt='([^']*)' src='([^']*)'>")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One short FixMatch run (low threshold, so some pseudo-labels are kept) and one supervised run."""
    root = tmp_path_factory.mktemp("report_runs")
    fewlabels.train(**SETTINGS, **{"algorithm.name": "fixmatch", "algorithm.threshold": 0.2, "out": str(root / "fm")})
    fewlabels.train(**SETTINGS, **{"algorithm.name": "supervised", "out": str(root / "sup")})
    return {"fixmatch": root / "fm", "supervised": root / "sup"}


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report", "*.safetensors"))
    return dst


def section(page: str, title: str) -> str:
    """The HTML of the section titled `title`."""
    match = re.search(rf"<section><h2>{re.escape(title)}</h2>(.*?)</section>", page, re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def table_rows(fragment: str) -> list[list[str]]:
    """Cell texts (unescaped) of the <td> rows in an HTML fragment."""
    rows = re.findall(r"<tr>(.*?)</tr>", fragment, re.S)
    return [[html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", r, re.S)] for r in rows if "<td>" in r]


def embedded_pngs(page: str) -> dict[str, bytes]:
    """alt text -> decoded PNG bytes of every <img>, which must all be data URIs."""
    out = {}
    for alt, src in IMG.findall(page):
        assert src.startswith("data:image/png;base64,"), src[:40]
        out[alt] = base64.b64decode(src.split(",", 1)[1], validate=True)
    return out


def assert_png(data: bytes) -> None:
    assert data.startswith(PNG_SIGNATURE)
    image = matplotlib.image.imread(io.BytesIO(data), format="png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_html_header_figures_and_tables(runs):
    run = runs["fixmatch"]
    summary = json.loads((run / "summary.json").read_text())
    classes = json.loads((run / "model.json").read_text())["classes"]
    path = write_report(run)
    assert path == run / "report" / "report.html"
    page = path.read_text()
    assert page.count("<img") == page.count("src=") == 4 and "<link" not in page and "<script" not in page

    header = dict(table_rows(section(page, "Run")))
    assert header["Algorithm"] == "fixmatch" and header["Dataset"] == "digits" and header["Seed"] == "0"
    assert header["Steps"] == "12" and header["Labels"] == f"40 labeled, {summary['num_unlabeled']} unlabeled"
    assert header["Final test accuracy"] == f"{100 * summary['test_accuracy']:.2f}%"
    assert header["Test accuracy, median of last evaluations"] == f"{100 * summary['test_accuracy_median_last']:.2f}%"
    assert header["Validation accuracy"] == f"{100 * summary['val_accuracy']:.2f}%"
    assert re.fullmatch(r"\d+\.\d s|\d+ min \d\d s", header["Wall time"])

    pngs = embedded_pngs(page)
    assert set(pngs) == {
        "Training curves",
        "Row-normalised confusion matrix",
        "Per-class test accuracy",
        "Pseudo-label class fractions over training steps",
    }
    for data in pngs.values():
        assert_png(data)
    files = {p.name: p.read_bytes() for p in path.parent.glob("*.png")}
    assert sorted(files.values()) == sorted(pngs.values())  # the PNGs on disk are the embedded ones
    assert not list(path.parent.glob(".*"))  # no temporary files left behind

    table = table_rows(section(page, "Per-class test accuracy"))
    assert [row[0] for row in table] == classes
    assert [row[1] for row in table] == [f"{100 * a:.1f}%" for a in summary["per_class_test_accuracy"]]
    assert [int(row[2]) for row in table] == [sum(r) for r in summary["confusion_matrix"]]
    assert "prior" in section(page, "Pseudo-label class histogram")
    assert html.escape((run / "config.yaml").read_text()) in section(page, "Config")


def test_markdown_links_existing_pngs(runs, tmp_path):
    path = write_report(runs["fixmatch"], out=tmp_path / "md", fmt="md")
    assert path == tmp_path / "md" / "report.md"
    text = path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == ["curves.png", "confusion.png", "per_class.png", "pseudo_histogram.png"]
    for link in links:
        assert_png((path.parent / link).read_bytes())
    assert "base64" not in text and "```yaml\ndata:" in text
    summary = json.loads((runs["fixmatch"] / "summary.json").read_text())
    assert f"| Final test accuracy | {100 * summary['test_accuracy']:.2f}% |" in text


def test_supervised_run_omits_pseudo_labels(runs, tmp_path):
    page = write_report(runs["supervised"], out=tmp_path).read_text()
    pseudo = section(page, "Pseudo-label class histogram")
    assert "No pseudo-labels were logged" in pseudo and "<img" not in pseudo
    assert set(embedded_pngs(page)) == {"Training curves", "Row-normalised confusion matrix", "Per-class test accuracy"}


def test_unfinished_run_still_reports_curves(runs, tmp_path):
    run = copy_run(runs["fixmatch"], tmp_path / "running")
    (run / "summary.json").unlink()
    (run / "model.json").unlink()  # written by _finish too
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 13, "loss": 1.')  # a row being written
    page = write_report(run).read_text()
    assert "The run has not finished" in section(page, "Run")
    assert dict(table_rows(section(page, "Run")))["Steps logged"] == "12 of 12"
    for title in ("Confusion matrix (test set)", "Per-class test accuracy"):
        assert "The run has not finished" in section(page, title) and "<img" not in section(page, title)
    pngs = embedded_pngs(page)
    assert set(pngs) == {"Training curves", "Pseudo-label class fractions over training steps"}
    assert_png(pngs["Training curves"])


def test_run_without_test_set_notes_it(runs, tmp_path):
    run = copy_run(runs["supervised"], tmp_path / "notest")
    summary = json.loads((run / "summary.json").read_text())
    del summary["confusion_matrix"], summary["per_class_test_accuracy"]
    summary["test_accuracy"] = summary["test_accuracy_median_last"] = None
    (run / "summary.json").write_text(json.dumps(summary))
    page = write_report(run, fmt="html").read_text()
    assert "no test set" in section(page, "Confusion matrix (test set)")
    assert "no test set" in section(page, "Per-class test accuracy")
    assert dict(table_rows(section(page, "Run")))["Final test accuracy"] == "—"
    assert set(embedded_pngs(page)) == {"Training curves"}


def test_class_names_are_escaped(runs, tmp_path):
    run = copy_run(runs["supervised"], tmp_path / "escape")
    info = json.loads((run / "model.json").read_text())
    info["classes"][0], info["classes"][1] = "<b>", 'a&"b|c'
    (run / "model.json").write_text(json.dumps(info))
    page = write_report(run).read_text()
    assert "<b>" not in page and "<td>&lt;b&gt;</td>" in page and "<td>a&amp;&quot;b|c</td>" in page
    assert [row[0] for row in table_rows(section(page, "Per-class test accuracy"))][:2] == ["<b>", 'a&"b|c']
    text = write_report(run, fmt="md").read_text()
    assert "| &lt;b&gt; |" in text and "| a&amp;&quot;b\\|c |" in text


def test_bad_run_folders_and_format(runs, tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a fewlabels run folder"):
        write_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report").exists()
    with pytest.raises(ConfigError, match="format"):
        write_report(runs["supervised"], out=tmp_path, fmt="pdf")
