"""Teacher pseudo-labelling of large unlabeled pools: throughput and memory at 100k and 1M images.

Generates random uint8 28x28 grayscale pools as .npy files under benchmarks/work/pseudo-label-scale/ (written in
chunks through short-lived memory maps, so generation memory stays bounded too; about 78 MB per 100k images,
kept for reruns), gets a teacher (a short supervised CNN run on Fashion-MNIST, or an untrained CNN built by hand
when Fashion-MNIST is not installed: throughput and memory do not depend on the weights), then labels every
pool with `fewlabels.pipelines.pseudo_label.pseudo_label` in a fresh subprocess per pool size, so that each
size has its own peak RSS. Writes benchmarks/results/pseudo_label_scale.{csv,md}.

    python benchmarks/pseudo_label_scale.py                     # 100k and 1M images
    python benchmarks/pseudo_label_scale.py --sizes 2000        # a smoke run

Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the labelling subprocess (it includes torch and the
model, measured also just before labelling starts); peak Python allocation is tracemalloc's peak during the call
(numpy and Python objects; torch's own tensor memory is not traced), which costs a little speed.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RESULTS = HERE / "results"
WORK = HERE / "work" / "pseudo-label-scale"
SHAPE = (1, 28, 28)
FIELDS = [
    "pool_size",
    "pool_mb",
    "shards",
    "shard_size",
    "batch_size",
    "device",
    "wall_s",
    "images_per_s",
    "rss_before_mb",
    "peak_rss_mb",
    "peak_python_alloc_mb",
    "peak_vm_hwm_mb",
]


def hardware() -> str:
    """CPU model, torch threads, GPU and torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {torch.get_num_threads()} torch threads; {gpu}; torch {torch.__version__}"


def make_pool(path: Path, n: int, chunk: int = 50_000) -> Path:
    """Random uint8 (n, 1, 28, 28) images, written chunk by chunk, each through its own short-lived memory map."""
    if path.is_file():
        arr = np.load(path, mmap_mode="r")
        ok = arr.shape == (n, *SHAPE) and arr.dtype == np.uint8
        del arr
        if ok:
            return path
    tmp = path.with_suffix(".tmp.npy")
    header = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, *SHAPE))
    del header  # the header and the file size are set; the data is written below
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rng = np.random.default_rng(start)
        out = np.load(tmp, mmap_mode="r+")
        out[start:stop] = rng.integers(0, 256, (stop - start, *SHAPE), dtype=np.uint8)
        out.flush()
        del out
    tmp.replace(path)
    return path


def get_teacher(work: Path, steps: int, given: str | None) -> tuple[Path, str]:
    """A run folder whose model takes 1x28x28 images, and how it was made (trained in a subprocess: see `child`)."""
    if given:
        return Path(given), "given"
    cmd = [sys.executable, __file__, "--make-teacher", "--work", str(work), "--teacher-steps", str(steps)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    made = json.loads(done.stdout.strip().splitlines()[-1])
    return Path(made["path"]), made["how"]


def make_teacher(work: Path, steps: int) -> tuple[Path, str]:
    """Train the teacher (or build an untrained one); run in its own process."""
    import fewlabels
    from fewlabels.errors import DataError

    trained = work / "teacher-fashion-mnist"
    summary = trained / "summary.json"
    if summary.is_file():  # described by the steps it was trained with, not this call's --teacher-steps
        made = json.loads(summary.read_text())["steps"]
        return trained, f"cnn, supervised on Fashion-MNIST ({made} steps, reused)"
    try:
        fewlabels.train(
            **{
                "data.dataset": "fashion-mnist",
                "data.labels_per_class": 100,
                "algorithm.name": "supervised",
                "model.name": "cnn",
                "train.steps": steps,
                "train.progress": False,
                "out": str(trained),
            },
            resume=(trained / "checkpoint.json").is_file(),  # a teacher killed half-way continues
        )
        return trained, f"cnn, supervised on Fashion-MNIST ({steps} steps)"
    except DataError:
        shutil.rmtree(trained, ignore_errors=True)
        return build_untrained(work / "teacher-untrained"), "cnn, untrained (Fashion-MNIST not installed)"


def build_untrained(folder: Path) -> Path:
    """An untrained CNN run folder for 1x28x28 inputs (config.yaml + model.safetensors/json)."""
    import torch

    from fewlabels.config import resolve_config
    from fewlabels.data.bundle import DataBundle
    from fewlabels.engine.run import save_model
    from fewlabels.models import create_model

    if (folder / "model.safetensors").is_file():
        return folder
    torch.manual_seed(0)
    cfg = resolve_config(None, **{"model.name": "cnn"})
    bundle = DataBundle(
        name="random",
        x_train=torch.randint(0, 256, (256, *SHAPE), dtype=torch.uint8),
        y_train=torch.zeros(256, dtype=torch.int64),
        classes=[str(i) for i in range(10)],
    )
    mean, std = bundle.channel_stats()
    model = create_model("cnn", num_classes=10, input_shape=SHAPE, mean=mean, std=std)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(cfg.to_yaml())
    save_model(folder, model, bundle, cfg)
    return folder


def vm_hwm_mb() -> float | None:
    """This process's own peak RSS (VmHWM, not inherited across exec), in MiB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def child(args: argparse.Namespace) -> None:
    """Label one pool in this (fresh) process and print one JSON line of measurements.

    The parent stays small (no torch, no training: the teacher is made in another subprocess), because Linux
    carries a parent's peak RSS into ru_maxrss of a child it spawns; VmHWM is reported too as a check.
    """
    import tracemalloc

    import torch

    from fewlabels.pipelines.pseudo_label import pseudo_label

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    labels = pseudo_label(
        args.teacher,
        args.pool,
        args.out,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        device=args.device,
        progress=args.progress,
    )
    wall = time.perf_counter() - t0
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    print(
        json.dumps(
            {
                "pool_size": labels.num_items,
                "pool_mb": round(Path(args.pool).stat().st_size / 2**20, 1),
                "shards": labels.num_shards,
                "shard_size": args.shard_size,
                "batch_size": args.batch_size,
                "device": device,
                "wall_s": round(wall, 2),
                "images_per_s": round(labels.num_items / wall),
                "rss_before_mb": round(rss_before / 1024, 1),
                "peak_rss_mb": round(peak / 1024, 1),
                "peak_python_alloc_mb": round(peak_py / 2**20, 2),
                "peak_vm_hwm_mb": vm_hwm_mb(),
                "hardware": hardware(),
            }
        )
    )


def write_results(rows: list[dict], stem: Path, teacher: str, shape_note: str) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    from fewlabels.io import atomic_open, atomic_write_text

    with atomic_open(f"{stem}.csv") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    md = [
        "# Pseudo-labelling large pools: throughput and memory",
        "",
        f"Hardware: {rows[0]['hardware']}",
        f"Teacher: {teacher}. Pools: {shape_note}, memory-mapped .npy, one fresh subprocess per size.",
        "",
        "| pool size | pool MB | shards | shard size | batch | device | wall (s) | images/s "
        "| RSS before labelling (MB) | peak RSS (MB) | VmHWM (MB) | peak Python alloc (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['pool_size']:,} | {r['pool_mb']} | {r['shards']} | {r['shard_size']:,} | {r['batch_size']} | "
            f"{r['device']} | {r['wall_s']} | {r['images_per_s']:,} | {r['rss_before_mb']} | {r['peak_rss_mb']} | "
            f"{r['peak_vm_hwm_mb']} | {r['peak_python_alloc_mb']} |"
        )
    if len(rows) > 1:
        lo, hi = rows[0], rows[-1]
        md += [
            "",
            f"From {lo['pool_size']:,} to {hi['pool_size']:,} images ({hi['pool_size'] / lo['pool_size']:.0f}x the "
            f"pool, {hi['pool_mb']} MB on disk) the peak RSS goes from {lo['peak_rss_mb']} to {hi['peak_rss_mb']} MB "
            f"and the peak Python allocation from {lo['peak_python_alloc_mb']} to {hi['peak_python_alloc_mb']} MB: "
            "memory is set by the shard and batch size, not by the pool.",
        ]
    md += [
        "",
        "Peak RSS: ru_maxrss of the labelling process (torch, the model and the pipeline); 'RSS before labelling' "
        "is the same figure just before the call (after imports); VmHWM is the process's own high-water mark "
        "from /proc/self/status (not inherited from the parent). Peak Python allocation: tracemalloc's peak "
        "during the call (numpy buffers and Python objects; torch tensor memory is not traced).",
        "",
        "Reproduce: `python benchmarks/pseudo_label_scale.py`",
        "",
    ]
    atomic_write_text(f"{stem}.md", "\n".join(md))
    print("\n".join(md))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated pool sizes")
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher", default=None, help="an existing run folder (1x28x28 inputs) instead of training one")
    p.add_argument("--teacher-steps", type=int, default=200)
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--results", type=Path, default=RESULTS / "pseudo_label_scale", help="output stem (.csv/.md)")
    p.add_argument("--progress", action="store_true", help="show each run's progress bar")
    # Internal: one labelling run in a fresh process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--make-teacher", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--pool", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if args.make_teacher:
        path, how = make_teacher(args.work, args.teacher_steps)
        print(json.dumps({"path": str(path), "how": how}))
        return

    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    args.work.mkdir(parents=True, exist_ok=True)
    teacher, how = get_teacher(args.work, args.teacher_steps, args.teacher)
    print(f"teacher: {teacher} ({how})", flush=True)
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        pool = make_pool(args.work / f"pool-{n}.npy", n)
        print(f"pool of {n:,} images ready in {time.perf_counter() - t0:.1f} s: {pool}", flush=True)
        out = args.work / f"labels-{n}"
        shutil.rmtree(out, ignore_errors=True)  # label everything: no shard of an earlier run is reused
        cmd = [sys.executable, __file__, "--child", "--pool", str(pool), "--out", str(out), "--teacher", str(teacher)]
        cmd += ["--shard-size", str(args.shard_size), "--batch-size", str(args.batch_size), "--device", args.device]
        if args.progress:
            cmd.append("--progress")
        done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
        shutil.rmtree(out, ignore_errors=True)
    write_results(rows, args.results, how, f"random uint8 {SHAPE[1]}x{SHAPE[2]} grayscale images")


if __name__ == "__main__":
    main()
