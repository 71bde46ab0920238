"""Which training rows are labeled, which are the unlabeled pool, and which are held out for validation.

A Split is a set of index arrays into `bundle.x_train`, drawn from one seed and saved next to a run so that a
resumed or repeated run trains on exactly the same labels.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fewlabels.data.bundle import DataBundle
from fewlabels.errors import ConfigError, DataError
from fewlabels.io import atomic_write_text

SPLIT_FORMAT_VERSION = 1
MAX_VAL_PER_CLASS = 500


def _index_array(a: Any) -> np.ndarray:
    arr = np.asarray(a, dtype=np.int64).reshape(-1)
    arr = np.sort(arr)
    # A Split is frozen; read-only arrays keep a caller from editing the indices behind the checksum.
    arr.flags.writeable = False
    return arr


def _sampled_rows(x: torch.Tensor) -> np.ndarray:
    """64 evenly spaced rows of `x` (all of them when fewer)."""
    rows = np.unique(np.linspace(0, max(len(x) - 1, 0), num=min(len(x), 64)).astype(np.int64))
    return x[torch.from_numpy(rows)].detach().cpu().contiguous().numpy()


def data_fingerprint(bundle: DataBundle) -> dict[str, Any]:
    """What a split's indices refer to: the training row count, the classes, a digest of the labels (-1 for
    unlabeled) and one of 64 evenly spaced input rows. Any change of these makes a saved split mean other rows.
    `heldout_sha256` digests the explicit validation and test sets the same way (their sizes, labels and 64 rows):
    a resumed run must select its model on, and report, the sets it started with."""
    y = bundle.y_train.detach().cpu().numpy().astype("<i8")
    heldout = hashlib.sha256()
    for x_h, y_h in ((bundle.x_val, bundle.y_val), (bundle.x_test, bundle.y_test)):
        if x_h is None or y_h is None:
            heldout.update(b"none;")
            continue
        heldout.update(f"{len(y_h)};".encode())
        heldout.update(y_h.detach().cpu().numpy().astype("<i8").tobytes())
        heldout.update(_sampled_rows(x_h).tobytes())
    return {
        "rows": len(y),
        "classes": list(bundle.classes),
        "labels_sha256": hashlib.sha256(y.tobytes()).hexdigest(),
        "inputs_sha256": hashlib.sha256(_sampled_rows(bundle.x_train).tobytes()).hexdigest(),
        "heldout_sha256": heldout.hexdigest(),
    }


@dataclass(frozen=True)
class Split:
    """Index arrays into x_train: the labeled set, the unlabeled pool and the carved validation set."""

    labeled: np.ndarray
    """Indices of the labeled training examples (int64, sorted)."""
    unlabeled: np.ndarray
    """Indices of the unlabeled pool (int64, sorted); by default it includes the labeled ones."""
    val: np.ndarray
    """Indices held out as labeled validation (empty when the bundle has an explicit val set)."""
    seed: int
    data: dict[str, Any] | None = field(default=None, compare=False)
    """`data_fingerprint` of the bundle the split was drawn from (None in splits saved before it existed)."""

    def __post_init__(self) -> None:
        for name in ("labeled", "unlabeled", "val"):
            object.__setattr__(self, name, _index_array(getattr(self, name)))
        object.__setattr__(self, "seed", int(self.seed))
        for name in ("labeled", "unlabeled", "val"):
            arr = getattr(self, name)
            if arr.size and (arr[0] < 0 or (np.diff(arr) == 0).any()):
                raise DataError(f"invalid split: the {name} indices are negative or repeated")
        for name in ("labeled", "unlabeled"):
            if np.intersect1d(self.val, getattr(self, name)).size:
                raise DataError(f"invalid split: validation indices overlap the {name} set")

    def checksum(self) -> str:
        """sha256 (hex) over the three index arrays, the seed and the data fingerprint (when there is one)."""
        h = hashlib.sha256()
        h.update(f"fewlabels-split-v{SPLIT_FORMAT_VERSION};seed={self.seed};".encode())
        for name in ("labeled", "unlabeled", "val"):
            arr = getattr(self, name)
            # Lengths are hashed too, so moving an index from one array to the next changes the digest.
            h.update(f"{name}:{arr.size};".encode())
            h.update(arr.astype("<i8").tobytes())
        if self.data is not None:
            h.update(json.dumps(self.data, sort_keys=True).encode())
        return h.hexdigest()

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict with the indices, the seed and the checksum."""
        return {
            "version": SPLIT_FORMAT_VERSION,
            "seed": self.seed,
            "labeled": self.labeled.tolist(),
            "unlabeled": self.unlabeled.tolist(),
            "val": self.val.tolist(),
            **({"data": self.data} if self.data is not None else {}),
            "checksum": self.checksum(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Split:
        """Rebuild a Split from `to_json` output; raises DataError if the checksum does not match."""
        try:
            split = cls(
                labeled=d["labeled"], unlabeled=d["unlabeled"], val=d["val"], seed=d["seed"], data=d.get("data")
            )
            expected = d["checksum"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"split file is malformed ({type(e).__name__}: {e}); delete it to draw a new split") from e
        if split.checksum() != expected:
            raise DataError(
                "split file checksum mismatch: its indices were edited or corrupted; restore it, "
                "or delete it to draw a new split (results will then not be comparable)"
            )
        return split

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the split as JSON atomically (temporary file in the same folder, then os.replace)."""
        atomic_write_text(path, json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Split:
        """Read a split saved by `save`, verifying its checksum."""
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"cannot read split file {path}: {e}; delete it to draw a new split") from e
        if not isinstance(d, dict):
            raise DataError(f"split file {path} is malformed; delete it to draw a new split")
        return cls.from_json(d)

    def check_fits(self, bundle: DataBundle) -> None:
        """Raise DataError if this split was drawn from other data than `bundle` (or cannot index it)."""
        if self.data is not None:
            now = data_fingerprint(bundle)
            what = {
                "rows": f"{self.data.get('rows')} training rows then, {now['rows']} now",
                "classes": f"classes {self.data.get('classes')} then, {now['classes']} now",
                "labels_sha256": "the labels (or the order of the files) changed",
                "inputs_sha256": "the images or features changed",
                "heldout_sha256": "the validation or test set changed",
            }
            # Splits saved before a key existed (heldout_sha256) are not judged on it.
            changed = [what[k] for k in what if k in self.data and self.data[k] != now[k]]
            if changed:
                raise DataError(
                    f"{bundle.name} is not the data this run's split was drawn from ({'; '.join(changed)}): restore "
                    "the data, or train into a new --out folder"
                )
        n = len(bundle.y_train)
        top = max((int(a.max()) for a in (self.labeled, self.unlabeled, self.val) if a.size), default=-1)
        if top >= n or min((int(a.min()) for a in (self.labeled, self.unlabeled, self.val) if a.size), default=0) < 0:
            raise DataError(
                f"the split indexes row {top} but {bundle.name} has {n} training rows; it was made for other "
                "data: delete the split file or point at the matching dataset"
            )
        y = bundle.y_train.numpy()
        if (y[self.labeled] < 0).any() or (y[self.val] < 0).any():
            raise DataError(
                f"the split marks unlabeled rows of {bundle.name} as labeled; it was made for other data: "
                "delete the split file or point at the matching dataset"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return self.seed == other.seed and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("labeled", "unlabeled", "val")
        )

    def __hash__(self) -> int:
        return hash(self.checksum())


def default_val_per_class(bundle: DataBundle) -> int:
    """Validation size per class for built-in sets: max(1, min(500, smallest class // 10))."""
    y = bundle.y_train.numpy()
    counts = np.bincount(y[y >= 0], minlength=bundle.num_classes)
    return max(1, min(MAX_VAL_PER_CLASS, int(counts.min()) // 10))


def _class_name(bundle: DataBundle, c: int) -> str:
    return f"{bundle.classes[c]!r} ({c})"


def make_split(
    bundle: DataBundle,
    labels_per_class: int | None = None,
    num_labels: int | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    unlabeled_includes_labeled: bool = True,
) -> Split:
    """Draw validation, labeled and unlabeled indices into `bundle.x_train` from `default_rng(seed)`.

    Validation: none when the bundle has x_val; else `val_per_class` per class, by default
    `max(1, min(500, smallest class // 10))` for built-in sets and `max(1, n_c // 10)` per class for user data
    (skipped, with a warning, when some class would keep fewer than 2 labeled examples). Labeled: all
    remaining labeled candidates, or `labels_per_class` per class, or `num_labels` spread evenly over
    the classes.
    Unlabeled pool: every non-validation row (FixMatch convention), or only the non-labeled ones when
    `unlabeled_includes_labeled` is False.
    """
    if labels_per_class is not None and num_labels is not None:
        raise ConfigError("give either --labels-per-class or --num-labels, not both")
    if labels_per_class is not None and labels_per_class < 1:
        raise ConfigError(f"--labels-per-class must be at least 1, got {labels_per_class}")
    if num_labels is not None and num_labels < 1:
        raise ConfigError(f"--num-labels must be at least 1, got {num_labels}")
    if val_per_class is not None and val_per_class < 0:
        raise ConfigError(f"--val-per-class must be 0 or more, got {val_per_class}")

    y = bundle.y_train.detach().cpu().numpy().astype(np.int64)
    num_classes = bundle.num_classes
    if num_classes < 1:
        raise DataError(f"{bundle.name} has no classes")
    bad = y[(y < -1) | (y >= num_classes)]
    if bad.size:
        raise DataError(
            f"{bundle.name} has training label {int(bad[0])}, outside -1 (unlabeled) and "
            f"0..{num_classes - 1}; fix the labels"
        )
    rng = np.random.default_rng(seed)
    per_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    for c, idx in enumerate(per_class):
        if idx.size == 0:
            raise DataError(
                f"class {_class_name(bundle, c)} has no labeled example: add at least one labeled example "
                "or remove the class"
            )
    sizes = np.array([idx.size for idx in per_class])

    # --- validation
    has_explicit_val = bundle.x_val is not None
    if has_explicit_val:
        if val_per_class:
            warnings.warn(
                f"--val-per-class {val_per_class} is ignored: {bundle.name} has an explicit validation set",
                stacklevel=2,
            )
        val_counts = np.zeros(num_classes, dtype=np.int64)
    elif val_per_class is not None:
        val_counts = np.full(num_classes, val_per_class, dtype=np.int64)
        short = int(np.argmin(sizes))
        if sizes[short] <= val_per_class:
            raise DataError(
                f"--val-per-class {val_per_class} leaves class {_class_name(bundle, short)} with no labeled "
                f"training example (it has {sizes[short]}); use --val-per-class <= {sizes[short] - 1}"
            )
    elif not bundle.labels_are_given:
        val_counts = np.full(num_classes, default_val_per_class(bundle), dtype=np.int64)
        short = int(np.argmin(sizes))
        if sizes[short] <= val_counts[short]:
            raise DataError(
                f"class {_class_name(bundle, short)} has only {sizes[short]} example(s), too few to hold "
                "one out for validation; pass --val-per-class 0"
            )
    else:
        val_counts = np.maximum(1, sizes // 10)
        if (sizes - val_counts < 2).any():
            short = int(np.argmin(sizes))
            warnings.warn(
                f"no validation split: class {_class_name(bundle, short)} has only {sizes[short]} labeled "
                "example(s), too few to hold some out; validation falls back to none. Add a val/ folder "
                "(val/<class>/*, or split=val rows / x_val, y_val) for model selection",
                stacklevel=2,
            )
            val_counts = np.zeros(num_classes, dtype=np.int64)

    # Each class is permuted once; its first val_counts[c] rows go to validation, the next ones to labeled.
    perms = [rng.permutation(idx) for idx in per_class]
    val = np.concatenate([p[:v] for p, v in zip(perms, val_counts, strict=True)])
    rest = [p[v:] for p, v in zip(perms, val_counts, strict=True)]
    rest_sizes = np.array([r.size for r in rest])

    # --- labeled
    if labels_per_class is not None:
        short = int(np.argmin(rest_sizes))
        if rest_sizes[short] < labels_per_class:
            after = f" after holding out {val_counts[short]} for validation" if val_counts[short] else ""
            raise DataError(
                f"asked for {labels_per_class} labels per class but class {bundle.classes[short]!r} has only "
                f"{rest_sizes[short]} labeled training examples{after}; "
                f"use --labels-per-class <= {rest_sizes[short]}"
            )
        take = np.full(num_classes, labels_per_class, dtype=np.int64)
    elif num_labels is not None:
        total = int(rest_sizes.sum())
        if num_labels > total:
            after = f" after holding out {int(val_counts.sum())} for validation" if val_counts.any() else ""
            raise DataError(
                f"asked for {num_labels} labels but only {total} labeled training examples exist{after}; "
                f"use --num-labels <= {total}"
            )
        if num_labels < num_classes:
            raise DataError(
                f"asked for {num_labels} labels but there are {num_classes} classes, so some class would "
                f"have no labeled example; use --num-labels >= {num_classes}"
            )
        take = _spread(num_labels, rest_sizes, rng)
    else:
        take = rest_sizes
    labeled = np.concatenate([r[:k] for r, k in zip(rest, take, strict=True)])

    # --- unlabeled pool
    pool = np.setdiff1d(np.arange(len(y)), val)
    if not unlabeled_includes_labeled:
        pool = np.setdiff1d(pool, labeled)
    return Split(labeled=labeled, unlabeled=pool, val=val, seed=seed, data=data_fingerprint(bundle))


def _spread(total: int, capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Allocate `total` items over classes as evenly as capacity allows; the rest go to random classes."""
    alloc = np.zeros_like(capacity)
    remaining = total
    while remaining > 0:
        active = np.flatnonzero(alloc < capacity)
        share = remaining // active.size
        if share == 0:
            alloc[rng.choice(active, size=remaining, replace=False)] += 1
            break
        add = np.minimum(share, capacity[active] - alloc[active])
        alloc[active] += add
        remaining -= int(add.sum())
    return alloc


def check_unlabeled(split: Split, algorithm_needs_unlabeled: bool) -> None:
    """Raise DataError when the algorithm needs unlabeled data and the pool holds none beyond the labeled set."""
    if algorithm_needs_unlabeled and np.setdiff1d(split.unlabeled, split.labeled).size == 0:
        raise DataError(
            "the unlabeled pool is empty (it holds only the labeled examples): add unlabeled samples "
            "(y == -1 / an unlabeled/ folder / empty CSV labels), hold labels back with --labels-per-class, "
            "or use --algorithm supervised"
        )
