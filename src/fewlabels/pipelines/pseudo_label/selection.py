"""Noisy Student's filtering and class balancing of a pseudo-label folder: `select` and the `Selection` it
returns (saved as a .safetensors file with a .json sidecar)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from fewlabels.errors import ConfigError
from fewlabels.io import atomic_write_bytes, atomic_write_text
from fewlabels.pipelines.pseudo_label.labels import PseudoLabels, _as_rows

SELECTION_FORMAT = "fewlabels-pseudo-label-selection"


@dataclass
class Selection:
    """Pseudo-labeled items chosen by `select`: pool positions (repeated for copies) and their targets."""

    index: Tensor
    """int64 pool positions, sorted; a duplicated item appears once per copy."""
    targets: Tensor
    """float32 (len(index) x C): the teacher's soft labels (rebuilt from top-k as `PseudoLabels.dense` does; exact
    when the labels were written with full=True), or the label-smoothed one-hot predicted class with hard=True."""
    class_counts: Tensor
    """int64 (C,): items per predicted class in the selection (copies included)."""
    kept_before_balance: Tensor
    """int64 (C,): items per predicted class that passed the threshold (and subset), before the cut and copies."""
    per_class: int
    """The per-class target N."""
    threshold: float
    classes: list[str] = field(default_factory=list)
    balance: bool = True
    hard: bool = False
    seed: int = 0
    source: str | None = None
    """The pseudo-label folder the selection came from."""

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write `path` (.safetensors: the tensors) and its .json sidecar (the rest), each atomically."""
        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        tensors = {
            "index": self.index.to(torch.int64).contiguous(),
            "targets": self.targets.to(torch.float32).contiguous(),
            "class_counts": self.class_counts.to(torch.int64).contiguous(),
            "kept_before_balance": self.kept_before_balance.to(torch.int64).contiguous(),
        }
        meta = {
            "format": SELECTION_FORMAT,
            "format_version": 1,
            "items": len(self),
            "per_class": self.per_class,
            "threshold": self.threshold,
            "classes": self.classes,
            "balance": self.balance,
            "hard": self.hard,
            "seed": self.seed,
            "source": self.source,
            "class_counts": self.class_counts.tolist(),
            "kept_before_balance": self.kept_before_balance.tolist(),
        }
        # The sidecar first: the .safetensors, whose presence marks a finished selection, is written last.
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata={"format": SELECTION_FORMAT}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        """Read what `save` wrote."""
        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        sidecar = path.with_suffix(".json")
        if not path.is_file() or not sidecar.is_file():
            raise ConfigError(f"no saved selection at {path} (needs {path.name} and {sidecar.name})")
        meta = json.loads(sidecar.read_text())
        t = load_file(str(path))
        return cls(
            index=t["index"],
            targets=t["targets"],
            class_counts=t["class_counts"],
            kept_before_balance=t["kept_before_balance"],
            per_class=int(meta["per_class"]),
            threshold=float(meta["threshold"]),
            classes=list(meta.get("classes", [])),
            balance=bool(meta.get("balance", True)),
            hard=bool(meta.get("hard", False)),
            seed=int(meta.get("seed", 0)),
            source=meta.get("source"),
        )


def _top1_stream(labels: PseudoLabels) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(index, max probability, predicted class) per shard."""
    for shard in labels.iter_shards(["index", "topk_probs", "topk_classes"]):
        yield (
            shard["index"].numpy(),
            shard["topk_probs"][:, 0].numpy().astype(np.float32),
            shard["topk_classes"][:, 0].numpy().astype(np.int64),
        )


def select(
    labels: PseudoLabels | str | Path,
    *,
    threshold: float = 0.3,
    per_class: int | None = None,
    balance: bool = True,
    hard: bool = False,
    seed: int = 0,
    subset: Sequence[int] | Tensor | np.ndarray | None = None,
    label_smoothing: float = 0.1,
) -> Selection:
    """Noisy Student's filtering and class balancing (`filter_unlabel.py`), streamed over the shards.

    Items whose max probability is below `threshold` are dropped (and, with `subset`, items outside those pool
    positions, e.g. a run's unlabeled pool). Per predicted class the `per_class` most confident survive (ties:
    the lower position first); `per_class=None` takes the median count over the classes that kept any item.
    With `balance=True` a class with m < per_class items gets per_class / m copies of each by stochastic
    rounding: every item gets floor or ceil of that factor, the ceil ones drawn at random (seeded by `seed`), so
    the class totals exactly per_class. Memory holds at most C x per_class candidates plus one shard, and the
    selection itself (its targets are a dense len x C matrix).
    With `hard=True` the targets are the predicted classes, label-smoothed by `label_smoothing` (0.1, as Noisy
    Student's hard-label path does: 1 - 0.1 + 0.1 / C on the class, 0.1 / C elsewhere).
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    labels = labels if isinstance(labels, PseudoLabels) else PseudoLabels(labels)
    if not (isinstance(threshold, int | float) and 0.0 <= threshold <= 1.0):
        raise ConfigError(f"threshold must be a probability in [0, 1] (Noisy Student uses 0.3), got {threshold!r}")
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1):
        raise ConfigError(f"per_class must be a positive integer or None (the median class count), got {per_class!r}")
    n, c = labels.num_items, labels.num_classes
    allowed = None if subset is None else np.unique(_as_rows(subset, n, "subset"))

    def eligible() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        for idx, conf, cls in _top1_stream(labels):
            keep = conf >= threshold
            if allowed is not None:
                lo, hi = np.searchsorted(allowed, [idx[0], idx[-1] + 1])
                keep &= np.isin(idx, allowed[lo:hi], assume_unique=True)
            yield idx[keep], conf[keep], cls[keep]

    counts = np.zeros(c, np.int64)
    counted = per_class is None
    if per_class is None:  # a first, cheap pass for the class counts
        for _, _, cls in eligible():
            counts += np.bincount(cls, minlength=c)
        present = counts[counts > 0]
        per_class = max(1, int(np.median(present))) if present.size else 1

    # Streaming per-class top-N: candidates of every class, merged with each shard and cut back to N per class.
    cand_idx, cand_conf, cand_cls = np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
    for idx, conf, cls in eligible():
        if not counted:
            counts += np.bincount(cls, minlength=c)
        all_idx = np.concatenate([cand_idx, idx])
        all_conf = np.concatenate([cand_conf, conf])
        all_cls = np.concatenate([cand_cls, cls])
        order = np.lexsort((all_idx, -all_conf, all_cls))  # by class, then confidence down, then position
        all_idx, all_conf, all_cls = all_idx[order], all_conf[order], all_cls[order]
        rank = np.arange(len(all_cls)) - np.searchsorted(all_cls, all_cls, side="left")
        keep = rank < per_class
        cand_idx, cand_conf, cand_cls = all_idx[keep], all_conf[keep], all_cls[keep]

    rng = np.random.default_rng(seed)
    chosen, chosen_cls, copies = [], [], []
    for k in range(c):
        members = cand_idx[cand_cls == k]
        m = len(members)
        if m == 0:
            continue
        reps = np.ones(m, np.int64)
        if balance and m < per_class:
            base, extra = divmod(per_class, m)
            reps[:] = base
            reps[rng.permutation(m)[:extra]] += 1
        chosen.append(members)
        chosen_cls.append(np.full(m, k, np.int64))
        copies.append(reps)
    unique_idx = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    unique_cls = np.concatenate(chosen_cls) if chosen else np.zeros(0, np.int64)
    reps_all = np.concatenate(copies) if copies else np.zeros(0, np.int64)
    order = np.argsort(unique_idx, kind="stable")
    unique_idx, unique_cls, reps_all = unique_idx[order], unique_cls[order], reps_all[order]
    index = np.repeat(unique_idx, reps_all)

    if hard:
        one_hot = torch.nn.functional.one_hot(torch.from_numpy(unique_cls), c).float()
        rows = one_hot * (1.0 - label_smoothing) + label_smoothing / c
    else:
        rows = labels.dense(unique_idx) if len(unique_idx) else torch.zeros(0, c)
    targets = rows.repeat_interleave(torch.from_numpy(reps_all), dim=0)
    class_counts = torch.from_numpy(np.bincount(np.repeat(unique_cls, reps_all), minlength=c).astype(np.int64))
    return Selection(
        index=torch.from_numpy(index.astype(np.int64)),
        targets=targets.float(),
        class_counts=class_counts.to(torch.int64),
        kept_before_balance=torch.from_numpy(counts),
        per_class=int(per_class),
        threshold=float(threshold),
        classes=labels.classes,
        balance=balance,
        hard=hard,
        seed=seed,
        source=str(labels.path),
    )
