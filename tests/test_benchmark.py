"""`fewlabels.benchmark`: a grid of tiny real digits runs, its CSV/report/figure, resuming, validation, subprocesses."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch

import fewlabels
from fewlabels import benchmark
from fewlabels.benchmark import (
    BenchmarkError,
    parse_algorithm_option,
    parse_algorithm_options,
    read_results,
    run_benchmark,
    summarize,
    write_benchmark_report,
)
from fewlabels.errors import ConfigError

FAST = {
    "train.steps": 10,
    "train.eval_every": 5,
    "train.log_every": 5,
    "train.batch_size": 16,
    "train.unlabeled_ratio": 2,
}
GRID = {"dataset": "digits", "algorithms": ["pseudo_label"], "labels_per_class": [2, 4], "seeds": [0, 1]}
NUMBERS = ["num_labels", "steps", "wall_seconds", "test_accuracy", "test_accuracy_median_last", "val_accuracy"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny runs on a shared machine are faster and steadier without thread contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, one_thread):
    """supervised + pseudo_label x {2, 4} labels per class x seeds {0, 1}, plus the ceiling: 10 real runs."""
    out = tmp_path_factory.mktemp("bench") / "digits"
    result = run_benchmark(out, overrides=FAST, **GRID)
    return out, result


def fail_if_called(*args, **kwargs):
    raise AssertionError("the benchmark trained a cell it should have skipped")


def plain_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pct(values):
    """Hand-computed 'mean ± sample std' in percent, as the report prints it."""
    values = [float(v) for v in values]
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def report_table(text):
    """The markdown table of report.md as {row label: {column header: cell}}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return header, rows


def test_results_csv_has_every_cell_with_the_run_folders_figures(grid):
    out, result = grid
    rows = plain_csv(out / "results.csv")
    cells = {(r["algorithm"], r["labels_per_class"], r["seed"]) for r in rows}
    expected = {(a, str(lpc), str(s)) for a in ("supervised", "pseudo_label") for lpc in (2, 4) for s in (0, 1)}
    expected |= {("supervised", "all", "0"), ("supervised", "all", "1")}
    assert len(rows) == 10 and cells == expected
    for r in rows:
        assert r["dataset"] == "digits"
        folder = out / r["run"]
        name = f"{r['algorithm']}-{r['labels_per_class']}-s{r['seed']}"
        assert folder == out / "runs" / name and (folder / "cell.yaml").is_file()
        summary = json.loads((folder / "summary.json").read_text())
        for key in NUMBERS:
            assert float(r[key]) == summary[key], (name, key)
        assert summary["seed"] == int(r["seed"])
        assert summary["algorithm"] == r["algorithm"]
    ceiling = [r for r in rows if r["labels_per_class"] == "all"]
    assert all(int(r["num_labels"]) > 40 for r in ceiling)  # every label, not a budget
    assert read_results(out / "results.csv") == result.rows
    assert result.trained == [r["run"].removeprefix("runs/") for r in rows]  # in grid order
    assert result.trained[0] == "supervised-2-s0" and result.trained[-1] == "supervised-all-s1"
    assert result.missing == [] and result.skipped == [] and result.resumed == []


def test_report_mean_std_equals_hand_computed_values(grid):
    out, _ = grid
    rows = plain_csv(out / "results.csv")
    text = (out / "report.md").read_text()
    header, table = report_table(text)
    assert header[0] == "algorithm" and header[-2:] == ["steps", "wall (s)"]
    labels = list(table)
    assert labels == ["supervised (labels only)", "pseudo_label", "supervised (all labels)"]  # baseline first
    column = {2: header[1], 4: header[2]}
    assert column[2] == "2/class (20 labels)" and column[4] == "4/class (40 labels)"
    for algorithm, label in (("supervised", labels[0]), ("pseudo_label", labels[1])):
        for lpc in (2, 4):
            rs = [r for r in rows if r["algorithm"] == algorithm and r["labels_per_class"] == str(lpc)]
            assert len(rs) == 2
            expected = f"{pct(r['test_accuracy'] for r in rs)} / {pct(r['test_accuracy_median_last'] for r in rs)}"
            assert table[label][column[lpc]] == expected
        runs = [r for r in rows if r["algorithm"] == algorithm and r["labels_per_class"] != "all"]
        assert table[label]["wall (s)"] == f"{statistics.mean(float(r['wall_seconds']) for r in runs):.1f}"
        assert table[label]["steps"] == "10"
    ceiling = [r for r in rows if r["labels_per_class"] == "all"]
    all_column = header[3]
    assert all_column == f"all labels ({ceiling[0]['num_labels']})"
    expected = f"{pct(r['test_accuracy'] for r in ceiling)} / {pct(r['test_accuracy_median_last'] for r in ceiling)}"
    assert table["supervised (all labels)"][all_column] == expected
    assert table["supervised (all labels)"][column[2]] == ""
    # Header: dataset, seeds, steps, hardware, torch, and the model-selection statement.
    assert "`digits`" in text and "seeds 0, 1" in text and "10 optimizer steps per run" in text
    assert f"torch {torch.__version__}" in text and "torch threads per run" in text
    assert "validation split only" in text and "never the best test accuracy" in text
    assert "![accuracy vs labels](accuracy_vs_labels.png)" in text


def test_summarize_matches_hand_computed_values(grid):
    _, result = grid
    by_key = {(s.algorithm, s.labels_per_class): s for s in summarize(result.rows)}
    assert list(by_key)[0] == ("supervised", 2) and list(by_key)[-1] == ("supervised", "all")
    assert len(by_key) == 5
    for (algorithm, lpc), s in by_key.items():
        rs = [r for r in result.rows if r["algorithm"] == algorithm and r["labels_per_class"] == lpc]
        assert s.seeds == (0, 1) and s.n == 2 and s.num_labels == rs[0]["num_labels"]
        for key in ("test_accuracy", "test_accuracy_median_last", "val_accuracy"):
            values = [r[key] for r in rs]
            assert getattr(s, key) == pytest.approx(statistics.mean(values))
            assert getattr(s, key + "_std") == pytest.approx(statistics.stdev(values))
        assert s.wall_seconds == pytest.approx(statistics.mean(r["wall_seconds"] for r in rs))
    one = summarize([{**result.rows[0], "seed": 5}])[0]
    assert one.n == 1 and one.test_accuracy_std is None and one.test_accuracy == result.rows[0]["test_accuracy"]


def test_plot_is_a_readable_png(grid):
    import matplotlib.image

    out, result = grid
    assert result.plot_png == out / "accuracy_vs_labels.png"
    image = matplotlib.image.imread(out / "accuracy_vs_labels.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 0  # not a blank canvas


def test_second_call_trains_nothing_and_report_can_be_rebuilt(grid, monkeypatch):
    out, first = grid
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}
    csv_before = (out / "results.csv").read_text()
    monkeypatch.setattr(benchmark, "train", fail_if_called)
    again = run_benchmark(out, overrides=FAST, jobs=2, **GRID)  # jobs=2 would spawn subprocesses for any work
    assert again.trained == [] and again.resumed == [] and len(again.skipped) == 10
    assert again.rows == first.rows
    # A call that trains nothing leaves the hardware of the calls that did (one process, not jobs=2).
    assert json.loads((out / "benchmark.json").read_text())["environment"]["jobs"] == 1
    assert "in parallel" not in (out / "report.md").read_text()
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")} == mtimes
    # The report is rewritten from the run folders alone.
    for name in ("results.csv", "report.md", "accuracy_vs_labels.png"):
        (out / name).unlink()
    rebuilt = write_benchmark_report(out)
    assert (out / "results.csv").read_text() == csv_before
    assert (out / "report.md").is_file() and (out / "accuracy_vs_labels.png").is_file()
    assert rebuilt.rows == first.rows


def test_a_different_config_in_the_same_folder_is_refused(grid, monkeypatch):
    out, _ = grid
    monkeypatch.setattr(benchmark, "train", fail_if_called)
    stored = (out / "benchmark.json").read_text()
    with pytest.raises(ConfigError, match=r"train\.steps: 10 -> 12"):
        run_benchmark(out, overrides={**FAST, "train.steps": 12}, **GRID)
    with pytest.raises(ConfigError, match=r"pseudo_label options: \{\} -> \{'threshold': 0\.5\}"):
        run_benchmark(out, overrides=FAST, algorithm_options={"pseudo_label": {"threshold": 0.5}}, **GRID)
    with pytest.raises(ConfigError, match="dataset 'digits', not 'mnist1d'"):
        run_benchmark(out, overrides=FAST, **{**GRID, "dataset": "mnist1d"})
    assert (out / "benchmark.json").read_text() == stored
    # Logging and checkpoint intervals change no model: the same grid continues (here: nothing left to train).
    again = run_benchmark(out, overrides={**FAST, "train.log_every": 3, "train.checkpoint_every": 7}, **GRID)
    assert again.trained == [] and len(again.skipped) == 10
    # The device is display-only under a step count, but under a wall-clock budget it sets the steps a cell makes.
    old = json.loads(stored)
    old["config"]["train"].update(budget="10m", device="cpu")
    new = json.loads(json.dumps(old))
    benchmark._merge_meta(old, new, out)  # the same device: fine
    new["config"]["train"]["device"] = "cuda"
    with pytest.raises(ConfigError, match=r"train.device: 'cpu' -> 'cuda' under a budget"):
        benchmark._merge_meta(old, new, out)


def test_settings_added_to_the_config_later_read_as_their_defaults(grid, monkeypatch, tmp_path):
    # A grid made before a config key existed (here: model.neck) continues under the new schema, as runs resume.
    out, _ = grid
    monkeypatch.setattr(benchmark, "train", fail_if_called)
    path = out / "benchmark.json"
    stored = path.read_text()
    meta = json.loads(stored)
    del meta["config"]["model"]["neck"]
    path.write_text(json.dumps(meta))
    try:
        again = run_benchmark(out, overrides=FAST, **GRID)
        assert again.trained == [] and len(again.skipped) == 10
        with pytest.raises(ConfigError, match=r"model\.neck: 0 -> 1"):
            run_benchmark(out, overrides={**FAST, "model.neck": 1}, **GRID)  # a real change is still refused
    finally:
        path.write_text(stored)


def test_resume_restart_and_extension(tmp_path, monkeypatch, one_thread):
    out = tmp_path / "bench"
    small = {"dataset": "digits", "algorithms": ["supervised"], "labels_per_class": [2], "seeds": [0, 1]}
    first = run_benchmark(out, overrides=FAST, ceiling=False, **small)
    assert sorted(first.trained) == ["supervised-2-s0", "supervised-2-s1"]
    resumed, broken = out / "runs" / "supervised-2-s0", out / "runs" / "supervised-2-s1"
    before = json.loads((resumed / "summary.json").read_text())
    metrics = (resumed / "metrics.jsonl").read_text()
    (resumed / "summary.json").unlink()  # killed after its last checkpoint: resume it
    (broken / "summary.json").unlink()
    (broken / "checkpoint.json").unlink()  # no usable checkpoint: restart it
    calls = []
    real_train = benchmark.train

    def spy(config, **kwargs):
        calls.append((fewlabels.resolve_config(config).out, kwargs.get("resume")))
        return real_train(config, **kwargs)

    monkeypatch.setattr(benchmark, "train", spy)
    second = run_benchmark(out, overrides=FAST, ceiling=False, **small)
    assert sorted(calls) == [(str(resumed), True), (str(broken), False)]
    assert second.resumed == ["supervised-2-s0"] and second.trained == ["supervised-2-s1"]
    after = json.loads((resumed / "summary.json").read_text())
    assert after["steps"] == 10 and after["test_accuracy"] == before["test_accuracy"]
    assert (resumed / "metrics.jsonl").read_text() == metrics  # no step was trained again
    assert {r["seed"] for r in read_results(out / "results.csv")} == {0, 1}

    # A later call may add cells: the stored grid becomes the union and the report covers all of it.
    calls.clear()
    third = run_benchmark(out, overrides=FAST, ceiling=False, **{**small, "seeds": [2]})
    assert calls == [(str(out / "runs" / "supervised-2-s2"), False)]
    assert third.trained == ["supervised-2-s2"] and third.skipped == []
    meta = json.loads((out / "benchmark.json").read_text())
    assert meta["seeds"] == [0, 1, 2] and len(meta["cells"]) == 3
    assert [r["seed"] for r in third.rows] == [0, 1, 2]
    assert "seeds 0, 1, 2" in (out / "report.md").read_text()


def test_everything_is_validated_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "train", fail_if_called)
    out = tmp_path / "never"
    base = {"dataset": "digits", "algorithms": ["fixmatch"], "labels_per_class": [4], "seeds": [0], "overrides": FAST}
    cases = [
        ({"algorithms": ["fixmatc"]}, "unknown algorithm 'fixmatc': did you mean 'fixmatch'"),
        ({"algorithm_options": {"flexmatch": {"threshold": 0.9}}}, "'flexmatch', which is not in the grid"),
        ({"algorithm_options": {"fixmatch": {"treshold": 0.9}}}, "no option 'treshold': did you mean 'threshold'"),
        ({"labels_per_class": [4, 0]}, "labels_per_class must be at least 1"),
        ({"labels_per_class": []}, "labels_per_class needs at least one value"),
        ({"seeds": []}, "seeds needs at least one value"),
        ({"jobs": 0}, "jobs must be a whole number >= 1"),
        ({"overrides": {"train.stepz": 5}}, "did you mean 'steps'"),
        ({"overrides": {"train.seed": 3}}, "set by the benchmark grid: use seeds"),
        ({"overrides": {"algorithm.threshold": 0.9}}, "algorithm_options"),
        ({"overrides": {"train.budget": "soon"}}, "cannot read the budget"),
    ]
    for change, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_benchmark(out, **{**base, **change})
    assert not out.exists()
    (out / "mine").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not empty and holds no benchmark.json"):
        run_benchmark(out, **base)
    with pytest.raises(ConfigError, match="holds no benchmark.json"):
        write_benchmark_report(out)


def test_parse_algorithm_option():
    assert parse_algorithm_option("fixmatch.threshold=0.9") == ("fixmatch", "threshold", 0.9)
    assert parse_algorithm_option("pseudo-label.warmup=0") == ("pseudo_label", "warmup", 0)
    assert parse_algorithm_option("uda.tsa=linear") == ("uda", "tsa", "linear")
    assert parse_algorithm_options(["fixmatch.threshold=0.9", "fixmatch.lambda_u=2", "fixmatch.threshold=0.8"]) == {
        "fixmatch": {"threshold": 0.8, "lambda_u": 2}
    }
    for bad in ("fixmatch", "threshold=0.9", "fixmatch.=1", ".threshold=1", "a.b.c=1"):
        with pytest.raises(ConfigError, match="ALGORITHM.OPTION=VALUE"):
            parse_algorithm_option(bad)
    with pytest.raises(ConfigError, match="did you mean 'fixmatch'"):
        parse_algorithm_option("fixmatc.threshold=0.9")


def test_parallel_subprocesses_make_the_same_rows(grid, tmp_path):
    ref_out, ref = grid
    out = tmp_path / "parallel"
    small = {"dataset": "digits", "algorithms": ["pseudo_label"], "labels_per_class": [2], "seeds": [0]}
    result = run_benchmark(out, overrides=FAST, ceiling=False, jobs=2, **small)
    expected = [r for r in ref.rows if r["labels_per_class"] == 2 and r["seed"] == 0]
    key = lambda r: (r["algorithm"], r["labels_per_class"], r["seed"], r["num_labels"], r["steps"], r["run"])
    assert sorted(map(key, result.rows)) == sorted(map(key, expected))
    assert [key(r) for r in read_results(out / "results.csv")] == [key(r) for r in result.rows]
    for r in result.rows:
        name = r["run"].removeprefix("runs/")
        log = (out / "runs" / f"{name}.log").read_text()
        assert "--no-progress" in log and "run folder:" in log  # the subprocess's own output
        # The subprocess trained exactly the config the in-process grid used for the same cell.
        assert fewlabels.Run(out / r["run"]).config.run_hash() == fewlabels.Run(ref_out / r["run"]).config.run_hash()


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_cell_is_reported_after_the_others_finish(tmp_path, jobs, one_thread):
    out = tmp_path / f"fail{jobs}"
    small = {"dataset": "digits", "algorithms": ["pseudo_label"], "labels_per_class": [2], "seeds": [0]}
    bad = {"pseudo_label": {"threshold": "high"}}  # a valid option name whose value only fails in training
    with pytest.raises(BenchmarkError) as info:
        run_benchmark(out, overrides=FAST, algorithm_options=bad, ceiling=False, jobs=jobs, **small)
    err = info.value
    log = out / "runs" / "pseudo_label-2-s0.log"
    assert "1 of 2 benchmark cells failed" in str(err)
    assert "pseudo_label-2-s0" in str(err) and str(log) in str(err)
    assert "TypeError" in str(err)  # the tail of the log says why
    assert [f.name for f in err.failures] == ["pseudo_label-2-s0"] and err.failures[0].log == log
    if jobs > 1:
        assert err.failures[0].returncode not in (0, None) and f"exit code {err.failures[0].returncode}" in str(err)
    rows = read_results(out / "results.csv")
    assert [(r["algorithm"], r["labels_per_class"], r["seed"]) for r in rows] == [("supervised", 2, 0)]
    assert err.result.rows == rows and err.result.missing == ["pseudo_label-2-s0"]
    assert "Not finished yet (1): pseudo_label-2-s0" in (out / "report.md").read_text()
    assert isinstance(err, fewlabels.FewLabelsError)  # the CLI prints it as a one-line error


def test_accuracy_protocol_report_lists_each_cells_seeds_and_hand_computed_spread(tmp_path):
    """benchmarks/accuracy.py --report-only: rows of several sessions, in protocol order, with their seeds."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("accuracy_protocol", Path("benchmarks/accuracy.py").resolve())
    protocol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protocol)

    def row(dataset, lpc, algorithm, seed, acc):
        return {
            "dataset": dataset,
            "labels_per_class": lpc,
            "num_labels": 40,
            "algorithm": algorithm,
            "seed": seed,
            "budget": "15m",
            "steps": 100 + seed,
            "wall_seconds": 900.0,
            "test_accuracy": acc,
            "test_accuracy_median_last": acc,
            "val_accuracy": None,
        }

    rows = [
        row("digits", 4, "fixmatch", 1, 0.90),
        row("fashion-mnist", 4, "fixmatch", 0, 0.60),
        row("digits", 4, "fixmatch", 0, 0.96),
        row("fashion-mnist", 4, "supervised", 0, 0.50),
    ]
    args = argparse.Namespace(budget="15m")
    text = protocol.write_report(rows, args, 0.0, tmp_path / "acc")
    table = [line for line in text.splitlines() if line.startswith("| ") and "/class" in line]
    assert [line.split(" | ")[:4] for line in table] == [
        ["| fashion-mnist", "4/class (40)", "supervised", "0"],
        ["| fashion-mnist", "4/class (40)", "fixmatch", "0"],
        ["| digits", "4/class (40)", "fixmatch", "0, 1"],
    ]
    # Two seeds: mean 93.0, sample standard deviation |96 - 90| / sqrt(2) = 4.24; one seed: no spread.
    assert "| 93.0 ± 4.2 |" in table[2] and "| 50.0 | 50.0 |" in table[0]
    again = protocol.load_rows(tmp_path / "acc")  # the CSV written beside it reads back as the same cells
    assert len(again) == 4 and again[("digits", "4", "fixmatch", "1", "15m")]["test_accuracy"] == 0.90
    # A cell of another budget in the same CSV is listed apart, never averaged with the 15-minute runs.
    short = {**row("digits", 4, "fixmatch", 2, 0.10), "budget": "3m"}
    text = protocol.write_report([*rows, short], args, 0.0, tmp_path / "mixed")
    assert "Budget 15m, 3m" in text
    assert "| digits | 4/class (40) | fixmatch (15m) | 0, 1 | 93.0 ± 4.2 |" in text
    assert "| digits | 4/class (40) | fixmatch (3m) | 2 | 10.0 |" in text


def test_accuracy_protocol_summary_pivots_cells_and_checks_fixmatch_targets(tmp_path):
    """The summary table (one row per setting, the all-labels ceiling as a column) and the targets' verdicts."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("accuracy_protocol", Path("benchmarks/accuracy.py").resolve())
    protocol = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(protocol)

    def row(lpc, algorithm, seed, acc, budget="15m"):
        n = {"4": 40, "25": 250, "all": 55000}[str(lpc)]
        return {"dataset": "fashion-mnist", "labels_per_class": lpc, "num_labels": n, "algorithm": algorithm,
                "seed": seed, "budget": budget, "steps": 10, "wall_seconds": 900.0, "test_accuracy": acc,
                "test_accuracy_median_last": acc, "val_accuracy": 0.5}  # fmt: skip

    rows = [
        row(25, "supervised", 0, 0.70),
        row(25, "supervised", 1, 0.74),
        row(25, "fixmatch", 0, 0.84),
        row(25, "fixmatch", 1, 0.88),
        row(25, "flexmatch", 0, 0.80),
        row("all", "supervised (all labels)", 0, 0.90),
        row(4, "supervised", 0, 0.50),
        row(4, "fixmatch", 0, 0.60),
        row(4, "freematch", 0, 0.70),
        row(4, "fixmatch", 0, 0.10, budget="3m"),
    ]
    text = protocol.write_report(rows, argparse.Namespace(budget="15m"), 0.0, tmp_path / "acc")
    lines = text.splitlines()
    summary = lines[lines.index("## Summary, 15m per run") + 2 :][:4]
    assert summary[0] == "| dataset, labels | supervised | fixmatch | flexmatch | freematch | softmatch | all labels |"
    # 40 labels: one seed each, below the table's two, so each cell names its seed; FreeMatch's 70.0 is the best.
    assert summary[2] == "| fashion-mnist, 40 | 50.0 (0) | 60.0 (0) | - | **70.0** (0) | - | 90.0 (0) |"
    # 250 labels: FixMatch's mean of 84 and 88 is 86.0, spread |88 - 84| / sqrt(2) = 2.8; it beats FlexMatch's 80.
    assert summary[3] == "| fashion-mnist, 250 | 72.0 ± 2.8 | **86.0 ± 2.8** | 80.0 (0) | - | - | 90.0 (0) |"
    # Targets from the seed means: 86.0 >= 85 met, 86.0 - 72.0 = +14.0 >= +10 met; at 40 labels +10.0 < +15 missed.
    assert (
        "- fashion-mnist, 25/class: FixMatch 86.0% (target >= 85%: met); "
        "+14.0 points over labels only (target +10: met); seeds 0, 1." in lines
    )
    assert "- fashion-mnist, 4/class: FixMatch +10.0 points over labels only (target +15: missed); seeds 0." in lines
    # The 3-minute cell has its own summary and no targets (the issue states them for 15 minutes).
    short = lines[lines.index("## Summary, 3m per run") :]
    assert "| fashion-mnist, 40 | - | **10.0** | - | - | - | - |" in short[:6]
    assert sum("target +15" in line for line in lines) == 1
