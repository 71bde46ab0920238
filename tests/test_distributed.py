"""DDP under torchrun: 2 CPU processes (gloo) must train the same model as 1 process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from fewlabels.engine import checkpoint as ckpt

ARGS = [
    "train",
    "--dataset",
    "mnist1d",
    "--labels-per-class",
    "10",
    "--model",
    "mlp",
    "--steps",
    "6",
    "--batch-size",
    "16",
    "--unlabeled-ratio",
    "2",
    "--eval-every",
    "3",
    "--device",
    "cpu",
    "--no-progress",
    # Per-sample normalisation and un-augmented views make the two set-ups exactly comparable: BatchNorm
    # statistics are per rank under DDP, and augmentation draws are seeded per rank.
    "--set",
    "model.options.norm=layer",
    "--set",
    "data.augment=false",
]


# FlexMatch's per-sample memory, FreeMatch's and SoftMatch's running statistics (a fast momentum, so that a
# per-rank update would show) and Temporal Ensembling's ensemble are updated from the batches of both ranks, so
# they must equal the single process's; Mean Teacher's teacher is the engine's EMA on every rank.
@pytest.mark.parametrize(
    ("algorithm", "options", "state_keys"),
    [
        ("flexmatch", ["--set", "algorithm.threshold=0.2"], ["selected"]),
        ("freematch", ["--set", "algorithm.momentum=0.5"], ["class_probs", "label_hist", "global_threshold"]),
        ("softmatch", ["--set", "algorithm.momentum=0.5"], ["class_probs", "mean", "var"]),
        ("temporal_ensembling", [], ["ensemble"]),
        # UDA's TSA-kept labeled loss is normalised by the kept count of the global batch.
        ("uda", ["--set", "algorithm.tsa=linear"], []),
        ("mean_teacher", [], []),
        # SimCLR's negatives are gathered from both ranks (differentiably): the global batch, as in one process.
        ("simclr", [], []),
    ],
)
def test_two_processes_match_one_process(tmp_path, algorithm, options, state_keys):
    single, double = tmp_path / "single", tmp_path / "double"
    args = [*ARGS, "--algorithm", algorithm, *options]
    subprocess.run(
        [sys.executable, "-m", "fewlabels", *args, "--out", str(single)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fewlabels",
    ]
    done = subprocess.run([*launch, *args, "--out", str(double)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = load_file(str(single / "model.safetensors")), load_file(str(double / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    sa, sb = ckpt.load_checkpoint(single)["algorithm"], ckpt.load_checkpoint(double)["algorithm"]
    for key in state_keys:
        assert torch.allclose(sa[key].float(), sb[key].float(), atol=1e-5), key
    if state_keys:
        key = state_keys[0]
        assert (sa[key] != sa[key].flatten()[0]).any()  # the state was actually updated
    summary = (double / "summary.json").read_text()
    assert '"world_size": 2' in summary
