"""The pseudo-label folder's format (manifest, shard names and ranges) and `PseudoLabels`, which reads it."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from fewlabels.errors import ConfigError

FORMAT = "fewlabels-pseudo-labels"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FILES = "files.txt"
SHARD_KEYS = ("index", "topk_probs", "topk_classes", "rest_mass")


def shard_name(i: int) -> str:
    """File name of shard i."""
    return f"shard-{i:05d}.safetensors"


def _shard_range(i: int, n: int, shard_size: int) -> tuple[int, int]:
    return i * shard_size, min((i + 1) * shard_size, n)


def _shard_done(path: Path, start: int, stop: int, full: bool) -> bool:
    """True when `path` is a readable shard whose index is exactly start..stop-1 (with every expected key)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            if not set(SHARD_KEYS) <= keys or (full and "probs" not in keys):
                return False
            index = f.get_tensor("index")
    except Exception:  # a truncated or foreign file: redo it
        return False
    return index.shape == (stop - start,) and torch.equal(index, torch.arange(start, stop, dtype=torch.int64))


def _as_rows(rows: Sequence[int] | Tensor | np.ndarray, n: int, what: str = "rows") -> np.ndarray:
    arr = rows.cpu().numpy() if isinstance(rows, Tensor) else np.asarray(rows)
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise ConfigError(f"{what} must be integer positions in the pool, got dtype {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.min() < 0 or arr.max() >= n:
        bad = int(arr[(arr < 0) | (arr >= n)][0])
        raise ConfigError(f"{what} holds position {bad}, outside the pool of {n} items (0..{n - 1})")
    return arr


def _dense_rows(shard: dict[str, Tensor], num_classes: int) -> Tensor:
    """(n x C) probabilities: the full rows when stored, else top-k plus the rest spread over the other classes."""
    if "probs" in shard:
        return shard["probs"].float()
    top_p, top_c, rest = shard["topk_probs"], shard["topk_classes"], shard["rest_mass"]
    n, k = top_p.shape
    others = num_classes - k
    fill = rest / others if others > 0 else torch.zeros_like(rest)
    dense = fill[:, None].expand(n, num_classes).clone()
    dense.scatter_(1, top_c.long(), top_p)
    return dense


class PseudoLabels:
    """A pseudo-label folder written by `pseudo_label` (or `write_probs`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise ConfigError(
                f"{self.path} is not a pseudo-label folder (no {MANIFEST}): pass the --out of `fewlabels pseudo-label`"
            )
        self.manifest: dict[str, Any] = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"{manifest} is not a fewlabels pseudo-label manifest")
        if self.manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ConfigError(
                f"{self.path} was written by a newer fewlabels (format {self.manifest['format_version']}); upgrade"
            )

    @staticmethod
    def exists(path: str | Path) -> bool:
        """True when `path` holds a pseudo-label manifest (finished or not; see `is_complete`)."""
        return (Path(path).expanduser() / MANIFEST).is_file()

    def __repr__(self) -> str:
        return f"PseudoLabels({str(self.path)!r}, items={self.num_items}, shards={self.num_shards})"

    def __len__(self) -> int:
        return self.num_items

    @property
    def num_items(self) -> int:
        """Items in the pool (rows 0..num_items-1 of the source)."""
        return int(self.manifest["data"]["length"])

    @property
    def classes(self) -> list[str]:
        """Class names of the teacher, index k -> name."""
        return list(self.manifest["classes"])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return int(self.manifest["num_classes"])

    @property
    def num_shards(self) -> int:
        """Number of shard files when complete."""
        return int(self.manifest["num_shards"])

    @property
    def shard_size(self) -> int:
        """Items per shard (the last may hold fewer)."""
        return int(self.manifest["shard_size"])

    @property
    def top_k(self) -> int:
        """Columns of topk_probs / topk_classes."""
        return int(self.manifest["top_k"])

    @property
    def full(self) -> bool:
        """Whether shards hold the full probability rows."""
        return bool(self.manifest["full"])

    def shard_path(self, i: int) -> Path:
        """Path of shard i."""
        return self.path / shard_name(i)

    def shard_range(self, i: int) -> tuple[int, int]:
        """(start, stop) rows of shard i."""
        return _shard_range(i, self.num_items, self.shard_size)

    def missing_shards(self) -> list[int]:
        """Shards not (completely) written yet."""
        return [
            i for i in range(self.num_shards) if not _shard_done(self.shard_path(i), *self.shard_range(i), self.full)
        ]

    def is_complete(self) -> bool:
        """True when every shard is written."""
        return not self.missing_shards()

    def files(self) -> list[str] | None:
        """The file of each row (image-file sources), or None for arrays and datasets."""
        path = self.path / FILES
        if not path.is_file():
            return None
        return path.read_text().splitlines()

    def resume_command(self) -> str:
        """The command that finishes (or repeats) this folder."""
        m = self.manifest
        teacher = m.get("teacher") or {}
        data = m["data"]
        where = data.get("name") or data.get("path") or f"<the same {data.get('kind', 'data')}>"
        opts = [f"--shard-size {m['shard_size']}", f"--top-k {m['top_k']}"]
        if m.get("temperature", 1.0) != 1.0:
            opts.append(f"--temperature {m['temperature']}")
        if m.get("full"):
            opts.append("--full")
        if teacher.get("which", "model") != "model":
            opts.append(f"--which {teacher['which']}")
        return (
            f"fewlabels pseudo-label {teacher.get('run', '<teacher run>')} {where} --out {self.path} {' '.join(opts)}"
        )

    def _require_complete(self) -> None:
        missing = self.missing_shards()
        if missing:
            shown = ", ".join(str(i) for i in missing[:8]) + (", ..." if len(missing) > 8 else "")
            raise ConfigError(
                f"{self.path} is missing {len(missing)} of {self.num_shards} shards ({shown}): finish them with "
                f"`{self.resume_command()}` (the same arguments as before; finished shards are kept)"
            )

    def load_shard(self, i: int, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Shard i as a dict of tensors (only `keys` when given)."""
        path = self.shard_path(i)
        if keys is None:
            return load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in keys}

    def iter_shards(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, Tensor]]:
        """Every shard in order, one at a time (checks first that all are there)."""
        self._require_complete()
        for i in range(self.num_shards):
            yield self.load_shard(i, keys)

    def dense(self, rows: Sequence[int] | Tensor | np.ndarray | None = None) -> Tensor:
        """(len(rows) x C) float32 soft labels for pool positions `rows` (all rows when None), in that order.

        Rebuilt from the top-k probabilities plus the remaining mass spread evenly over the other classes, so
        every row sums to 1; exact when the folder was written with full=True. All rows take N x C x 4 bytes.
        """
        self._require_complete()
        n, c = self.num_items, self.num_classes
        want = np.arange(n, dtype=np.int64) if rows is None else _as_rows(rows, n)
        out = torch.empty(len(want), c, dtype=torch.float32)
        keys = ["probs"] if self.full else ["topk_probs", "topk_classes", "rest_mass"]
        shard_of = want // self.shard_size
        for i in np.unique(shard_of):
            where = np.flatnonzero(shard_of == i)
            start, _ = self.shard_range(int(i))
            dense = _dense_rows(self.load_shard(int(i), keys), c)
            out[torch.from_numpy(where)] = dense[torch.from_numpy(want[where] - start)]
        return out

    def hard(self, rows: Sequence[int] | Tensor | np.ndarray | None = None) -> Tensor:
        """int64 argmax classes for `rows` (all rows when None)."""
        self._require_complete()
        n = self.num_items
        want = np.arange(n, dtype=np.int64) if rows is None else _as_rows(rows, n)
        out = torch.empty(len(want), dtype=torch.int64)
        shard_of = want // self.shard_size
        for i in np.unique(shard_of):
            where = np.flatnonzero(shard_of == i)
            start, _ = self.shard_range(int(i))
            top = self.load_shard(int(i), ["topk_classes"])["topk_classes"][:, 0].long()
            out[torch.from_numpy(where)] = top[torch.from_numpy(want[where] - start)]
        return out
