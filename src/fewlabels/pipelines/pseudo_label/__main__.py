"""`python -m fewlabels.pipelines.pseudo_label TEACHER_RUN DATA --out DIR ...`: `pseudo_label` from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from fewlabels.errors import ConfigError, DataError
from fewlabels.pipelines.pseudo_label.shards import pseudo_label


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fewlabels.pipelines.pseudo_label TEACHER_RUN DATA --out DIR ...` (also under torchrun)."""
    p = argparse.ArgumentParser(prog="python -m fewlabels.pipelines.pseudo_label", description=pseudo_label.__doc__)
    p.add_argument("teacher", help="run folder of the teacher")
    p.add_argument("data", help="a .npy (memory-mapped), .npz, image folder, .csv with a path column, or dataset name")
    p.add_argument("--out", required=True, help="folder for manifest.json and the shards")
    p.add_argument("--which", default="model", choices=["model", "best"])
    p.add_argument("--shard-size", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--full", action="store_true", help="also store the full probability rows")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--data-root", default=None)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        labels = pseudo_label(
            a.teacher,
            a.data,
            a.out,
            which=a.which,
            shard_size=a.shard_size,
            batch_size=a.batch_size,
            top_k=a.top_k,
            full=a.full,
            temperature=a.temperature,
            device=a.device,
            progress=not a.no_progress,
            data_root=a.data_root,
        )
    except (ConfigError, DataError) as e:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank fails alike; say it once
            print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{labels.num_items} items in {labels.num_shards} shards under {labels.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
