"""Teacher pseudo-labels over a pool in shards (fewlabels.pipelines.pseudo_label) and Noisy Student's selection."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import fewlabels
from fewlabels.augment import to_float
from fewlabels.config import resolve_config
from fewlabels.data import load_dataset
from fewlabels.data.bundle import DataBundle
from fewlabels.engine.run import Run, save_model
from fewlabels.errors import ConfigError, DataError
from fewlabels.models import create_model
from fewlabels.pipelines import pseudo_label as plmod
from fewlabels.pipelines.pseudo_label import (
    ItemSource,
    PseudoLabels,
    Selection,
    open_source,
    pseudo_label,
    select,
    shard_name,
    write_probs,
)
from fewlabels.pipelines.pseudo_label import selection as plselection
from fewlabels.pipelines.pseudo_label import shards as plshards

# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A CNN trained briefly on digits, with dropout so that train-mode outputs would differ from eval-mode ones."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    fewlabels.train(
        **{
            "data.dataset": "digits",
            "data.labels_per_class": 4,
            "algorithm.name": "supervised",
            "model.dropout": 0.5,
            "train.steps": 30,
            "train.progress": False,
            "train.device": "cpu",
            "out": str(out),
        }
    )
    return out


def build_teacher(folder: Path, seed: int = 0, model: str = "mlp") -> Path:
    """A run folder by hand (config.yaml + model.safetensors/json): an untrained model for 1x8x8 images."""
    torch.manual_seed(seed)
    cfg = resolve_config(None, **{"model.name": model, "data.dataset": "digits"})
    bundle = DataBundle(
        name="fake",
        x_train=torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8),
        y_train=torch.zeros(64, dtype=torch.int64),
        classes=[str(i) for i in range(10)],
    )
    mean, std = bundle.channel_stats()
    net = create_model(model, num_classes=10, input_shape=(1, 8, 8), mean=mean, std=std)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    save_model(folder, net, bundle, cfg)
    return folder


@pytest.fixture(scope="module")
def mlp_teacher(tmp_path_factory) -> Path:
    return build_teacher(tmp_path_factory.mktemp("mlp") / "run")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """All 1,797 digits images (train and test rows), uint8 (N, 1, 8, 8)."""
    b = load_dataset("digits")
    return torch.cat([b.x_train, b.x_test])


def direct_probs(run: Path, x: torch.Tensor) -> torch.Tensor:
    model = Run(run).load_model().eval()
    with torch.no_grad():
        return model(to_float(x)).softmax(-1)


def shards(folder: Path) -> list[dict[str, torch.Tensor]]:
    return [load_file(str(p)) for p in sorted(folder.glob("shard-*.safetensors"))]


def assert_same_shards(a: Path, b: Path, exact: bool = True) -> None:
    sa, sb = shards(a), shards(b)
    assert len(sa) == len(sb) > 0
    for x, y in zip(sa, sb, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if exact or key == "index":
                assert torch.equal(x[key], y[key]), key
            elif key != "topk_classes":  # near-ties may swap classes between processes
                assert torch.allclose(x[key], y[key], atol=1e-5), key


class RecordingSource(ItemSource):
    """Wraps a source and records every (start, stop) read."""

    def __init__(self, inner: ItemSource, log: list[tuple[int, int]]) -> None:
        self.inner, self.log, self.kind = inner, log, inner.kind

    def __len__(self) -> int:
        return len(self.inner)

    def read(self, start: int, stop: int) -> torch.Tensor:
        self.log.append((start, stop))
        return self.inner.read(start, stop)

    def names(self, start: int, stop: int) -> list[str] | None:
        return self.inner.names(start, stop)

    def describe(self) -> dict:
        return self.inner.describe()


@pytest.fixture
def recorded(monkeypatch) -> list[tuple[int, int]]:
    """Every read pseudo_label makes from its source."""
    log: list[tuple[int, int]] = []
    real = plmod.open_source
    monkeypatch.setattr(plshards, "open_source", lambda *a, **k: RecordingSource(real(*a, **k), log))
    return log


# --------------------------------------------------------------------------------------- pseudo_label


def test_outputs_equal_the_teachers_softmax_in_eval_mode(teacher, digits, tmp_path):
    out = tmp_path / "full"
    labels = pseudo_label(teacher, digits, out, shard_size=100, batch_size=64, full=True, progress=False)
    probs = direct_probs(teacher, digits)

    # Eval mode matters for this teacher (dropout 0.5, BatchNorm): train-mode outputs differ.
    model = Run(teacher).load_model().train()
    with torch.no_grad():
        assert not torch.allclose(model(to_float(digits)).softmax(-1), probs, atol=1e-3)

    # Layout: 18 shards of 100 consecutive rows, the last one partial.
    assert labels.num_shards == 18 and labels.num_items == 1797 and labels.is_complete()
    parts = shards(out)
    assert [len(s["index"]) for s in parts] == [100] * 17 + [97]
    assert torch.equal(torch.cat([s["index"] for s in parts]), torch.arange(1797))

    top_p = torch.cat([s["topk_probs"] for s in parts])
    top_c = torch.cat([s["topk_classes"] for s in parts])
    rest = torch.cat([s["rest_mass"] for s in parts])
    ref_p, _ = probs.topk(5, dim=-1)
    assert top_p.dtype == torch.float32 and top_p.shape == (1797, 5)
    assert torch.allclose(top_p, ref_p, atol=1e-6)
    assert (top_p[:, :-1] >= top_p[:, 1:]).all()
    assert torch.allclose(probs.gather(1, top_c), top_p, atol=1e-6)  # classes hold those probabilities
    assert torch.allclose(rest, 1 - top_p.sum(-1), atol=1e-6)
    assert torch.allclose(labels.dense(), probs, atol=1e-6)  # exact with full=True
    assert torch.equal(labels.hard(), probs.argmax(-1))
    rows = [5, 1796, 0, 5]
    assert torch.allclose(labels.dense(rows), probs[rows], atol=1e-6)

    m = labels.manifest
    weights = (teacher / "model.safetensors").read_bytes()
    assert m["teacher"]["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert m["teacher"]["run"] == str(teacher.resolve())
    assert m["classes"] == Run(teacher).classes and labels.classes == m["classes"]
    assert m["preprocessing"]["input_shape"] == [1, 8, 8] and m["preprocessing"]["model"] == "cnn"
    assert m["data"]["length"] == 1797 and m["shard_size"] == 100 and m["num_shards"] == 18
    assert m["top_k"] == 5 and m["temperature"] == 1.0 and m["full"] is True

    # Top-k only: dense rows sum to 1 and hold the teacher's top-k probabilities at its top-k classes.
    topk = pseudo_label(teacher, digits, tmp_path / "topk", shard_size=500, top_k=3, progress=False)
    dense = topk.dense()
    assert torch.allclose(dense.sum(-1), torch.ones(1797), atol=1e-5)
    assert torch.allclose(dense.gather(1, top_c[:, :3]), top_p[:, :3], atol=1e-6)
    assert "probs" not in load_file(str(tmp_path / "topk" / shard_name(0)))

    # Temperature: softmax(logits / T).
    hot = pseudo_label(teacher, digits[:50], tmp_path / "hot", temperature=2.0, full=True, progress=False)
    model = Run(teacher).load_model()
    with torch.no_grad():
        expected = (model(to_float(digits[:50])) / 2.0).softmax(-1)
    assert torch.allclose(hot.dense(), expected, atol=1e-6)


def test_two_runs_give_identical_shards(mlp_teacher, digits, tmp_path):
    for name in ("a", "b"):
        pseudo_label(mlp_teacher, digits, tmp_path / name, shard_size=400, batch_size=128, progress=False)
    assert_same_shards(tmp_path / "a", tmp_path / "b")


def test_restart_skips_finished_shards_and_redoes_missing_or_broken_ones(mlp_teacher, digits, tmp_path, recorded):
    out = tmp_path / "out"
    pseudo_label(mlp_teacher, digits, out, shard_size=100, batch_size=100, progress=False)
    # load_file maps the file: clone before shard 5 is overwritten in place below.
    before = {p.name: {k: v.clone() for k, v in load_file(str(p)).items()} for p in out.glob("shard-*")}
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    (out / shard_name(3)).unlink()
    (out / shard_name(5)).write_bytes(b"not a safetensors file")  # what a non-atomic writer could leave
    labels = PseudoLabels(out)
    assert labels.missing_shards() == [3, 5] and not labels.is_complete()
    with pytest.raises(ConfigError, match=r"missing 2 of 18 shards \(3, 5\).*fewlabels pseudo-label"):
        labels.dense()

    recorded.clear()
    pseudo_label(mlp_teacher, digits, out, shard_size=100, batch_size=100, progress=False)
    batch_reads = [r for r in recorded if r[1] - r[0] > 1]  # leaves out the 1-item fingerprint reads
    assert batch_reads == [(300, 400), (500, 600)]
    for p in out.glob("shard-*"):
        redone = load_file(str(p))
        assert all(torch.equal(redone[k], before[p.name][k]) for k in redone), (
            p.name,
            [(k, (redone[k].double() - before[p.name][k].double()).abs().max()) for k in redone],
        )
        if p.name not in (shard_name(3), shard_name(5)):
            assert p.stat().st_mtime_ns == mtimes[p.name]
    assert PseudoLabels(out).is_complete()

    recorded.clear()
    pseudo_label(mlp_teacher, digits, out, shard_size=100, batch_size=100, progress=False)
    assert not [r for r in recorded if r[1] - r[0] > 1]  # nothing left to do


def test_restart_with_other_teacher_data_or_settings_is_refused(mlp_teacher, digits, tmp_path):
    out = tmp_path / "out"
    pseudo_label(mlp_teacher, digits, out, shard_size=500, progress=False)
    other = build_teacher(tmp_path / "other", seed=1)
    with pytest.raises(ConfigError, match=r"teacher weights \(sha256\).*new --out"):
        pseudo_label(other, digits, out, shard_size=500, progress=False)
    with pytest.raises(ConfigError, match=r"data length was 1797, now 1796"):
        pseudo_label(mlp_teacher, digits[:-1], out, shard_size=500, progress=False)
    with pytest.raises(ConfigError, match=r"data \(sha256"):
        pseudo_label(mlp_teacher, digits.flip(0), out, shard_size=500, progress=False)
    with pytest.raises(ConfigError, match=r"top_k was 5, now 3"):
        pseudo_label(mlp_teacher, digits, out, shard_size=500, top_k=3, progress=False)
    with pytest.raises(ConfigError, match=r"shard_size was 500, now 400"):
        pseudo_label(mlp_teacher, digits, out, shard_size=400, progress=False)
    # A folder that is not a pseudo-label folder is not written into.
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="new, empty --out"):
        pseudo_label(mlp_teacher, digits, tmp_path / "busy", progress=False)


def test_npy_memory_map_gives_the_same_labels_as_the_tensor(mlp_teacher, digits, tmp_path):
    np.save(tmp_path / "pool.npy", digits.numpy())
    np.save(tmp_path / "pool_hw.npy", digits.numpy()[:, 0])  # (N, H, W): a channel axis is added
    pseudo_label(mlp_teacher, digits, tmp_path / "tensor", shard_size=700, progress=False)
    npy = pseudo_label(mlp_teacher, tmp_path / "pool.npy", tmp_path / "npy", shard_size=700, progress=False)
    pseudo_label(mlp_teacher, str(tmp_path / "pool_hw.npy"), tmp_path / "hw", shard_size=700, progress=False)
    assert_same_shards(tmp_path / "tensor", tmp_path / "npy")
    assert_same_shards(tmp_path / "tensor", tmp_path / "hw")
    assert npy.manifest["data"]["kind"] == "npy"
    assert npy.manifest["data"]["path"] == str((tmp_path / "pool.npy").resolve())


def test_sources_refuse_wrong_shapes_dtypes_and_unknown_names(tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((4, 1, 9, 9), np.uint8))
    with pytest.raises(ConfigError, match=r"\(1, 9, 9\), but the teacher takes \(1, 8, 8\).*resize_images"):
        open_source(tmp_path / "big.npy", (1, 8, 8))
    with pytest.raises(ConfigError, match="uint8"):
        open_source(torch.zeros(4, 1, 8, 8, dtype=torch.int64), (1, 8, 8))
    with pytest.raises(ConfigError, match="float vectors"):
        open_source(torch.zeros(4, 40, dtype=torch.uint8), (40,))
    with pytest.raises(ConfigError, match="did you mean 'digits'"):
        open_source("digts", (1, 8, 8))
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "missing.npy", (1, 8, 8))
    assert len(open_source("digits", (1, 8, 8))) == 1258  # a built-in dataset's x_train
    nhwc = open_source(np.zeros((3, 8, 8, 3), np.uint8), (3, 8, 8))
    assert nhwc.read(0, 2).shape == (2, 3, 8, 8)


def test_image_folder_and_csv_sources_map_rows_back_to_files(teacher, tmp_path):
    from fewlabels.api import load_inputs

    folder = tmp_path / "pool"
    rng = np.random.default_rng(0)
    for i in range(20):
        sub = folder / "a" if i % 2 else folder / "b" / "deeper"
        sub.mkdir(parents=True, exist_ok=True)
        if i % 5 == 0:  # a few RGB images of another size: converted to gray and resized like `fewlabels predict`
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB").save(sub / f"img{i:02d}.png")
        else:
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(sub / f"img{i:02d}.png")
    (folder / "a" / "notes.txt").write_text("not an image")

    labels = pseudo_label(teacher, folder, tmp_path / "out", shard_size=8, batch_size=4, progress=False)
    names, x = load_inputs([str(folder)], (1, 8, 8))
    assert labels.num_items == 20 and labels.num_shards == 3
    assert labels.files() == [str(Path(n).resolve()) for n in names]
    assert labels.manifest["data"]["kind"] == "folder" and labels.manifest["data"]["files"] == "files.txt"
    probs = direct_probs(teacher, x)
    assert torch.equal(labels.hard(), probs.argmax(-1))
    dense = labels.dense()
    assert torch.allclose(dense.gather(1, labels.hard()[:, None]), probs.max(-1, keepdim=True).values, atol=1e-6)

    # A CSV manifest (another order, relative paths) labels each file the same.
    files = labels.files()
    order = list(reversed(range(20)))
    lines = ["path,label"] + [f"{os.path.relpath(files[i], tmp_path)}," for i in order]
    (tmp_path / "pool.csv").write_text("\n".join(lines) + "\n")
    from_csv = pseudo_label(teacher, tmp_path / "pool.csv", tmp_path / "csv", shard_size=8, progress=False)
    assert from_csv.files() == [files[i] for i in order]
    assert torch.equal(from_csv.hard(), labels.hard()[order])

    # An unreadable image names the file and row.
    (folder / "a" / "zz-broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"zz-broken\.png \(row 10 of"):
        pseudo_label(teacher, folder, tmp_path / "broken", shard_size=8, progress=False)


def write_pool(path: Path, n: int) -> Path:
    """A float32 (n, 1, 8, 8) .npy pool written in chunks through a memory map."""
    pool = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 1, 8, 8))
    for start in range(0, n, 5000):
        stop = min(start + 5000, n)
        pool[start:stop] = np.random.default_rng(start).random((stop - start, 1, 8, 8), dtype=np.float32)
    pool.flush()
    del pool
    return path


def test_memory_does_not_grow_with_the_pool(mlp_teacher, tmp_path, recorded):
    batch = 512
    small, big = write_pool(tmp_path / "small.npy", 5_000), write_pool(tmp_path / "big.npy", 20_000)
    pseudo_label(mlp_teacher, small, tmp_path / "warm", shard_size=2000, batch_size=batch, progress=False)  # imports
    peaks = {}
    for name, path in (("small", small), ("big", big)):
        recorded.clear()
        tracemalloc.start()
        try:
            labels = pseudo_label(mlp_teacher, path, tmp_path / name, shard_size=2000, batch_size=batch, progress=False)
            peaks[name] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert labels.is_complete()
        assert max(stop - start for start, stop in recorded) <= batch  # the source is only read in batches
        assert sum(stop - start for start, stop in recorded if stop - start > 1) == len(labels)  # each item once
    assert labels.num_shards == 10
    pool_bytes = big.stat().st_size  # 5.1 MB
    assert peaks["big"] < pool_bytes / 4, peaks
    assert peaks["big"] < 1.25 * peaks["small"] + 65536, peaks  # 4x the pool, about the same peak


# --------------------------------------------------------------------------------------------- select


def handmade(tmp_path: Path, top_k: int = 2) -> PseudoLabels:
    """9 items, 3 classes; max probabilities chosen by hand; the other two classes split the rest."""
    spec = [(0, 0.9), (0, 0.8), (0, 0.7), (0, 0.6), (1, 0.95), (1, 0.4), (2, 0.55), (2, 0.85), (2, 0.45)]
    probs = torch.zeros(len(spec), 3)
    for i, (c, p) in enumerate(spec):
        probs[i] = (1 - p) / 2
        probs[i, c] = p
    return write_probs(tmp_path / "labels", probs, classes=["a", "b", "c"], shard_size=4, top_k=top_k)


def test_select_thresholds_keeps_the_top_per_class_and_balances(tmp_path):
    labels = handmade(tmp_path)
    plain = select(labels, threshold=0.5, per_class=2, balance=False)
    assert plain.index.tolist() == [0, 1, 4, 6, 7]
    assert plain.kept_before_balance.tolist() == [4, 1, 2]
    assert plain.class_counts.tolist() == [2, 1, 2]
    assert torch.allclose(plain.targets, labels.dense(plain.index), atol=1e-6)
    assert torch.allclose(plain.targets.sum(-1), torch.ones(5), atol=1e-6)

    balanced = select(labels, threshold=0.5, per_class=2)
    assert balanced.index.tolist() == [0, 1, 4, 4, 6, 7]  # class b's one item is copied
    assert balanced.class_counts.tolist() == [2, 2, 2]
    # Default per_class: the median count after filtering, (4, 1, 2) -> 2.
    default = select(labels, threshold=0.5)
    assert default.per_class == 2 and torch.equal(default.index, balanced.index)

    hard = select(labels, threshold=0.5, per_class=2, hard=True)
    one_hot = torch.tensor([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=torch.float32)
    assert torch.allclose(hard.targets, one_hot * 0.9 + 0.1 / 3)  # label-smoothed by 0.1, as Noisy Student's
    assert torch.equal(select(labels, threshold=0.5, per_class=2, hard=True, label_smoothing=0.0).targets, one_hot)

    low = select(labels, threshold=0.0, per_class=3, balance=False)
    assert low.index.tolist() == [0, 1, 2, 4, 5, 6, 7, 8]
    assert select(labels, threshold=0.96).index.numel() == 0


def test_select_stochastic_copies_fill_classes_exactly_and_are_seeded(tmp_path):
    labels = handmade(tmp_path)
    extra = set()
    for seed in range(20):
        s = select(labels, threshold=0.5, per_class=3, seed=seed)
        assert s.class_counts.tolist() == [3, 3, 3]
        idx = s.index.tolist()
        assert sorted(set(idx)) == [0, 1, 2, 4, 6, 7]
        assert idx.count(4) == 3 and idx.count(6) + idx.count(7) == 3
        extra.add(6 if idx.count(6) == 2 else 7)
        again = select(labels, threshold=0.5, per_class=3, seed=seed)
        assert torch.equal(s.index, again.index) and torch.equal(s.targets, again.targets)
    assert extra == {6, 7}  # the extra copy goes to either item, by the seed


def test_select_streams_shards_like_the_in_memory_selection(tmp_path):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, 5, generator=gen) * 2
    logits[:, 3] -= 2  # a rare class, to be duplicated
    probs = logits.softmax(-1)
    labels = write_probs(tmp_path / "labels", probs, shard_size=128, top_k=2)
    conf, cls = probs.max(-1)
    for per_class in (40, 150):
        s = select(labels, threshold=0.3, per_class=per_class, seed=3)
        kept = conf >= 0.3
        for c in range(5):
            members = torch.nonzero(kept & (cls == c)).flatten()
            assert s.kept_before_balance[c] == len(members)
            top = members[conf[members].argsort(descending=True, stable=True)[:per_class]]
            picked = s.index[torch.isin(s.index, members)]
            assert set(picked.tolist()) == set(top.tolist())
            assert s.class_counts[c] == len(picked) == per_class  # balanced: exactly per_class, copies included
        assert torch.equal(s.targets.argmax(-1), cls[s.index])  # copies come from their own class


def test_select_subset_and_save_load(tmp_path):
    labels = handmade(tmp_path)
    s = select(labels, threshold=0.5, per_class=2, subset=torch.tensor([0, 2, 4, 5, 6]))
    assert s.index.tolist() == [0, 2, 4, 4, 6, 6]
    assert s.kept_before_balance.tolist() == [2, 1, 1]
    with pytest.raises(ConfigError, match="position 9"):
        select(labels, subset=[9])

    path = s.save(tmp_path / "sel")
    assert path.name == "sel.safetensors" and (tmp_path / "sel.json").is_file()
    back = Selection.load(path)
    assert torch.equal(back.index, s.index) and torch.equal(back.targets, s.targets)
    assert torch.equal(back.class_counts, s.class_counts) and back.per_class == 2 and back.classes == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------- torchrun


def test_two_torchrun_processes_write_the_same_shards_as_one(mlp_teacher, digits, tmp_path):
    np.save(tmp_path / "pool.npy", digits.numpy())
    pseudo_label(mlp_teacher, tmp_path / "pool.npy", tmp_path / "one", shard_size=300, device="cpu", progress=False)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    args = ["-m", "fewlabels", "pseudo-label", str(mlp_teacher), str(tmp_path / "pool.npy")]  # the README's form
    args += ["--out", str(tmp_path / "two"), "--shard-size", "300", "--device", "cpu", "--no-progress"]
    done = subprocess.run([*launch, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert PseudoLabels(tmp_path / "two").is_complete()
    assert_same_shards(tmp_path / "one", tmp_path / "two", exact=False)
    assert torch.equal(PseudoLabels(tmp_path / "one").hard(), PseudoLabels(tmp_path / "two").hard())
    # Each rank took whole shards, alternately: 6 shards of 300 rows, ranks 0, 1, 0, 1, 0, 1.
    writers = []
    for path in sorted((tmp_path / "two").glob("shard-*.safetensors")):
        with safe_open(str(path), "pt") as f:
            writers.append(int(f.metadata()["rank"]))
    assert writers == [0, 1, 0, 1, 0, 1]


def test_a_kill_between_a_selections_two_writes_leaves_no_finished_selection(tmp_path, monkeypatch):
    """The sidecar is written first and the .safetensors (what marks a finished selection) last."""
    labels = handmade(tmp_path)
    chosen = select(labels, threshold=0.5, per_class=2)
    target = tmp_path / "sel.safetensors"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(plselection, "atomic_write_bytes", killed)
        with pytest.raises(KeyboardInterrupt):
            chosen.save(target)
    assert target.with_suffix(".json").is_file() and not target.exists()
    with pytest.raises(ConfigError, match="no saved selection"):
        Selection.load(target)
    chosen.save(target)  # the rerun writes both
    assert torch.equal(Selection.load(target).index, chosen.index)


def test_a_leftover_file_list_of_a_killed_first_start_is_not_refused(tmp_path):
    out = tmp_path / "labels"
    out.mkdir()
    (out / plmod.FILES).write_text("/old/a.png\n")  # killed before manifest.json was written
    assert plshards._prepare_out(out, {"format": "x"}, ["/new/a.png"]) is None
    assert (out / plmod.FILES).read_text() == "/new/a.png\n" and (out / plmod.MANIFEST).is_file()
    (out / "other.txt").write_text("not ours")
    (out / plmod.MANIFEST).unlink()
    assert "no manifest.json" in plshards._prepare_out(out, {"format": "x"}, None)


def test_noisy_student_refuses_selected_rows_outside_the_unlabeled_pool(tmp_path):
    from fewlabels.algorithms import create_algorithm

    labels = handmade(tmp_path)
    chosen = select(labels, threshold=0.5, per_class=2)  # rows 0, 1, 4, 4, 6, 7
    path = chosen.save(tmp_path / "sel.safetensors")
    algo = create_algorithm("noisy_student", 3, 9, pseudo_labels=str(path))
    assert algo.unlabeled_pool(list(range(9))) == chosen.index.tolist()
    with pytest.raises(ConfigError, match=r"2 selected pseudo-labeled rows \(e.g. row 6\).*validation"):
        algo.unlabeled_pool([0, 1, 2, 3, 4, 5, 8])  # rows 6 and 7 are, say, validation rows


def test_select_command_keeps_only_the_runs_remaining_train_rows(teacher, tmp_path, capsys):
    """`fewlabels pseudo-label` then `fewlabels select --run`: the selection equals select() on the run's U."""
    import json as _json

    from fewlabels.cli import main
    from fewlabels.data import Split
    from fewlabels.pipelines.noisy_student import unlabeled_pool

    labels_dir = tmp_path / "labels"
    assert main(["pseudo-label", str(teacher), "digits", "--out", str(labels_dir), "--no-progress"]) == 0
    out = tmp_path / "sel.safetensors"
    argv = ["select", str(labels_dir), "--out", str(out), "--threshold", "0.2", "--run", str(teacher), "--hard"]
    assert main(argv) == 0, capsys.readouterr().err
    assert f"-> {out}" in capsys.readouterr().out
    split = Split.load(teacher / "split.json")
    u = unlabeled_pool(split)
    chosen = Selection.load(out)
    assert set(chosen.index.tolist()) <= set(u.tolist())
    assert not set(chosen.index.tolist()) & (set(split.labeled) | set(split.val))
    expected = select(labels_dir, threshold=0.2, hard=True, subset=u)
    assert torch.equal(chosen.index, expected.index) and torch.allclose(chosen.targets, expected.targets)
    assert _json.loads(out.with_suffix(".json").read_text())["hard"] is True
    # A bad threshold is one clear line.
    assert main(["select", str(labels_dir), "--out", str(out), "--threshold", "2"]) == 2
    assert "threshold must be a probability" in capsys.readouterr().err


def test_select_refuses_a_run_whose_split_indexes_other_rows_or_classes(tmp_path, capsys):
    """The run's U is a list of row numbers: applied to pseudo-labels of other data it would keep the wrong rows."""
    from fewlabels.cli import main
    from fewlabels.data import Split
    from fewlabels.pipelines.noisy_student import run_unlabeled_pool

    labels = handmade(tmp_path)  # 9 rows, classes a, b, c
    run = tmp_path / "run"
    run.mkdir()

    def save_split(rows: int, classes: list[str]) -> None:
        Split([0, 4], list(range(8)), [8], seed=0, data={"rows": rows, "classes": classes}).save(run / "split.json")

    save_split(9, ["a", "b", "c"])
    assert run_unlabeled_pool(run, labels).tolist() == [1, 2, 3, 5, 6, 7]  # U: the pool minus labeled and val rows
    with pytest.raises(DataError, match=r"not the data this run's split was drawn from \(9 training rows then"):
        run_unlabeled_pool(run, labels, load_dataset("digits"))  # the data the pipeline reloads must fit too
    save_split(12, ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"cover 9 rows but the split of .* was drawn from 12 training rows"):
        run_unlabeled_pool(run, labels)
    save_split(9, ["a", "b", "d"])
    with pytest.raises(ConfigError, match=r"classes \['a', 'b', 'c'\] but the run .* has \['a', 'b', 'd'\]"):
        run_unlabeled_pool(run, labels)
    (run / "config.yaml").write_text("{}\n")
    out = tmp_path / "sel.safetensors"
    assert main(["select", str(labels.path), "--out", str(out), "--run", str(run)]) == 2
    assert "pass the run whose teacher wrote them" in capsys.readouterr().err and not out.exists()
