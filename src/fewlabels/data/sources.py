"""Built-in datasets and `load_dataset`, the one entry point that turns a name or a path into a DataBundle.

Every built-in loader is registered in `DATASETS` as a function `(root, download, **kw) -> DataBundle` whose
docstring's first line is what `fewlabels datasets` prints. Nothing is downloaded unless `download=True`.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fewlabels.data.bundle import DataBundle
from fewlabels.errors import ConfigError, DataError
from fewlabels.registry import Registry

Loader = Callable[..., DataBundle]

DATASETS: Registry[Loader] = Registry("dataset")

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
"""Where Debian's `dataset-fashion-mnist` package installs the IDX files."""

DIGITS_TEST_FRACTION = 0.3
DIGITS_SPLIT_SEED = 20240517
"""Seed of the fixed test split of scikit-learn's bundled sets (digits, wine, breast_cancer, iris); independent of
the run seed so every run scores the same rows."""

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
_DIGIT_CLASSES = [str(i) for i in range(10)]


def default_data_root() -> str:
    """Where datasets go when no root is given: $FEWLABELS_DATA_ROOT, else ~/.cache/fewlabels/data."""
    env = os.environ.get("FEWLABELS_DATA_ROOT")
    if env:
        return env
    return str(Path.home() / ".cache" / "fewlabels" / "data")


def _images(x: np.ndarray) -> torch.Tensor:
    """uint8 NCHW numpy -> contiguous tensor that owns its memory (torchvision arrays may be views)."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.uint8))


def _labels(y: Any) -> torch.Tensor:
    return torch.from_numpy(np.asarray(y, dtype=np.int64).copy())


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 NCHW images to size x size (bilinear, antialiased when shrinking)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    out = []
    # Chunked so that a large set never needs a float copy of the whole tensor at once.
    for chunk in torch.split(x, 4096):
        y = F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out.append(y.round().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out) with round(fraction * n_c) of each class held out; both sorted."""
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        held.append(rng.permutation(idx)[: int(round(fraction * len(idx)))])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    kept = np.setdiff1d(np.arange(len(y)), held_out)
    return kept.astype(np.int64), held_out.astype(np.int64)


# ----------------------------------------------------------------------------------------------- digits


@DATASETS.register("digits")
def load_digits(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """scikit-learn digits: 1,797 8x8 gray digits, 10 classes; fixed 30% stratified test split (own seed).

    No test split ships with the data, so 30% of each class is held out with DIGITS_SPLIT_SEED, which does not
    depend on the run seed: every run, whatever its seed, is scored on the same 539 test images.
    """
    _no_options("digits", kw)
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    # Pixel values are 0..16; scale to the 0..255 range every image pipeline here assumes.
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    train, test = stratified_holdout(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return DataBundle(
        name="digits",
        x_train=_images(x[train]),
        y_train=_labels(y[train]),
        classes=list(_DIGIT_CLASSES),
        modality="image",
        x_test=_images(x[test]),
        y_test=_labels(y[test]),
        hflip=False,
        default_model="cnn",
    )


# ------------------------------------------------------------------------ scikit-learn's bundled tables


def _sklearn_table(name: str, load: Callable[[], Any], kw: dict[str, Any]) -> DataBundle:
    """A bundled scikit-learn table as vectors (raw features; the models standardize), with the digits-style fixed
    30% stratified test split."""
    _no_options(name, kw)
    d = load()
    x = np.asarray(d.data, dtype=np.float32)
    y = np.asarray(d.target, dtype=np.int64)
    train, test = stratified_holdout(y, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
    return DataBundle(
        name=name,
        x_train=torch.from_numpy(x[train]),
        y_train=_labels(y[train]),
        classes=[str(c) for c in d.target_names],
        modality="vector",
        x_test=torch.from_numpy(x[test]),
        y_test=_labels(y[test]),
        hflip=False,
        default_model="mlp",
    )


@DATASETS.register("wine")
def load_wine(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """scikit-learn wine: 178 wines, 13 chemical measurements, 3 cultivars; fixed 30% stratified test split."""
    from sklearn.datasets import load_wine as sk_load

    return _sklearn_table("wine", sk_load, kw)


@DATASETS.register("breast_cancer")
def load_breast_cancer(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """scikit-learn breast cancer: 569 tumours, 30 features, malignant/benign; fixed 30% stratified test split."""
    from sklearn.datasets import load_breast_cancer as sk_load

    return _sklearn_table("breast_cancer", sk_load, kw)


@DATASETS.register("iris")
def load_iris(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """scikit-learn iris: 150 flowers, 4 measurements, 3 species; fixed 30% stratified test split."""
    from sklearn.datasets import load_iris as sk_load

    return _sklearn_table("iris", sk_load, kw)


# ---------------------------------------------------------------------------------------------- mnist1d


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(args_key: str) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    for k, v in json.loads(args_key).items():
        setattr(args, k, v)
    # make_dataset reseeds the global `random` and numpy generators; restore them so loading data never
    # changes the caller's random streams.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: np.asarray(d[k]) for k in ("x", "y", "x_test", "y_test")}


@DATASETS.register("mnist1d")
def load_mnist1d(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """MNIST-1D: 4,000/1,000 length-40 signals, 10 classes; generated offline in seconds (vector data)."""
    from mnist1d.data import get_dataset_args

    known = get_dataset_args(as_dict=True)
    bad = sorted(set(kw) - set(known) - {"url"})
    if bad:
        raise ConfigError(f"mnist1d has no option {bad[0]!r}: choose among {', '.join(sorted(known))}")
    key = json.dumps(kw, sort_keys=True)
    arrays: dict[str, np.ndarray] | None = None
    cache_file = None
    if root is not None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        cache_file = Path(root) / "mnist1d" / f"mnist1d-{digest}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
    if arrays is None:
        arrays = _mnist1d_arrays(key)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, cache_file)
    return DataBundle(
        name="mnist1d",
        x_train=torch.from_numpy(arrays["x"].astype(np.float32)),
        y_train=_labels(arrays["y"]),
        classes=list(_DIGIT_CLASSES),
        modality="vector",
        x_test=torch.from_numpy(arrays["x_test"].astype(np.float32)),
        y_test=_labels(arrays["y_test"]),
        hflip=False,
        default_model="mlp",
    )


# ---------------------------------------------------------------------------------------- fashion-mnist


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) of unsigned bytes into a numpy array."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {p}: {e}; delete it and fetch it again") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{p} is not an IDX file (bad magic number); delete it and fetch it again")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise DataError(f"{p}: IDX element type 0x{dtype_code:02x} is not supported (only unsigned bytes)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{p} is truncated inside its header; delete it and fetch it again")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(
            f"{p} is truncated: header says {dims} ({int(np.prod(dims))} bytes) but holds {body.size}; "
            "delete it and fetch it again"
        )
    return body.reshape(dims).copy()


_FMNIST_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def _find_idx(folders: list[Path]) -> dict[str, Path] | None:
    for folder in folders:
        found = {}
        for key, base in _FMNIST_FILES.items():
            for name in (base + ".gz", base):
                if (folder / name).is_file():
                    found[key] = folder / name
                    break
        if len(found) == len(_FMNIST_FILES):
            return found
    return None


def _fmnist_folders(root: str | None) -> list[Path]:
    if root is not None:
        # The folder itself, torchvision's layout after FashionMNIST(root, download=True), a named subfolder.
        return [Path(root), Path(root) / "FashionMNIST" / "raw", Path(root) / "fashion-mnist"]
    return [Path(DEBIAN_FASHION_MNIST), Path(default_data_root()) / "FashionMNIST" / "raw"]


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """Fashion-MNIST: 60,000/10,000 28x28 grayscale clothes, 10 classes (Debian package or --download)."""
    _no_options("fashion-mnist", kw)
    folders = _fmnist_folders(root)
    files = _find_idx(folders)
    if files is None and download:
        from torchvision.datasets import FashionMNIST

        target = root if root is not None else default_data_root()
        _torchvision_call("fashion-mnist", target, lambda: FashionMNIST(target, train=True, download=True))
        files = _find_idx([Path(target) / "FashionMNIST" / "raw"])
    if files is None:
        where = ", ".join(str(f) for f in folders)
        if root is not None and _find_idx([Path(DEBIAN_FASHION_MNIST)]) is not None:
            fix = f"drop --data-root to read the system package's copy in {DEBIAN_FASHION_MNIST}"
        else:
            fix = "`apt-get install dataset-fashion-mnist`"
        raise DataError(
            f"Fashion-MNIST files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-...) "
            f"not found; looked in {where}. Fix: {fix}, or "
            "`--data-root DIR` pointing at a folder that holds them, or `--download`"
        )
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(
                f"Fashion-MNIST {split} files disagree: images {x.shape}, labels {y.shape} "
                f"({files[f'x_{split}'].parent}); delete them and fetch them again"
            )
        if y.size and y.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"Fashion-MNIST {split} labels go up to {y.max()}; the label file is corrupt")
    return DataBundle(
        name="fashion-mnist",
        x_train=_images(arrays["x_train"][:, None]),
        y_train=_labels(arrays["y_train"]),
        classes=list(FASHION_MNIST_CLASSES),
        modality="image",
        x_test=_images(arrays["x_test"][:, None]),
        y_test=_labels(arrays["y_test"]),
        hflip=True,
        default_model="cnn",
    )


# ------------------------------------------------------------------------------- torchvision-backed sets


def _torchvision_call(name: str, root: str, make: Callable[[], Any]) -> Any:
    """Run a torchvision dataset constructor, turning its missing-file and download errors into DataError."""
    try:
        return make()
    except RuntimeError as e:
        # torchvision's own message speaks of download=True; ours names the CLI flag instead.
        raise DataError(
            f"{name} files not found or corrupted under {root}: pass --download to fetch them there, "
            f"or --data-root DIR pointing at a folder that already holds them"
        ) from e
    except OSError as e:
        # URLError and socket errors are OSErrors: the download itself failed.
        raise DataError(
            f"could not download {name} into {root} ({e}); check the network, or copy the files there "
            "by hand and run without --download"
        ) from e


def _tv_root(root: str | None) -> str:
    return root if root is not None else default_data_root()


@DATASETS.register("cifar10")
def load_cifar10(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """CIFAR-10: 50,000/10,000 32x32 RGB photos, 10 classes (torchvision files; --download fetches 170 MB)."""
    return _load_cifar("cifar10", root, download, kw, default_model="wrn28_2")


@DATASETS.register("cifar100")
def load_cifar100(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """CIFAR-100: 50,000/10,000 32x32 RGB photos, 100 classes (torchvision files; --download gets 161 MB)."""
    return _load_cifar("cifar100", root, download, kw, default_model="wrn28_8")


def _load_cifar(name: str, root: str | None, download: bool, kw: dict[str, Any], default_model: str) -> DataBundle:
    _no_options(name, kw)
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == "cifar10" else CIFAR100
    r = _tv_root(root)
    train = _torchvision_call(name, r, lambda: cls(r, train=True, download=download))
    test = _torchvision_call(name, r, lambda: cls(r, train=False, download=False))
    return DataBundle(
        name=name,
        x_train=_images(np.asarray(train.data).transpose(0, 3, 1, 2)),
        y_train=_labels(train.targets),
        classes=list(train.classes),
        modality="image",
        x_test=_images(np.asarray(test.data).transpose(0, 3, 1, 2)),
        y_test=_labels(test.targets),
        hflip=True,
        default_model=default_model,
    )


@DATASETS.register("svhn")
def load_svhn(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """SVHN: 73,257/26,032 32x32 RGB house-number digits, 10 classes (torchvision .mat files in root)."""
    _no_options("svhn", kw)
    from torchvision.datasets import SVHN

    r = _tv_root(root)
    train = _torchvision_call("svhn", r, lambda: SVHN(r, split="train", download=download))
    test = _torchvision_call("svhn", r, lambda: SVHN(r, split="test", download=download))
    return DataBundle(
        name="svhn",
        x_train=_images(train.data),
        y_train=_labels(train.labels),
        classes=list(_DIGIT_CLASSES),
        modality="image",
        x_test=_images(test.data),
        y_test=_labels(test.labels),
        hflip=False,
        default_model="wrn28_2",
    )


@DATASETS.register("stl10")
def load_stl10(root: str | None = None, download: bool = False, **kw: Any) -> DataBundle:
    """STL-10: 5,000 labeled + 100,000 unlabeled 96x96 RGB photos, 8,000 test, 10 classes (3 GB in RAM)."""
    _no_options("stl10", kw)
    from torchvision.datasets import STL10

    r = _tv_root(root)
    # 'train+unlabeled' reads both parts in one pass (each STL10 construction re-hashes all files) and already
    # marks the unlabeled part with -1.
    train = _torchvision_call("stl10", r, lambda: STL10(r, split="train+unlabeled", download=download))
    test = _torchvision_call("stl10", r, lambda: STL10(r, split="test", download=False))
    classes = list(getattr(train, "classes", None) or STL10_CLASSES)
    return DataBundle(
        name="stl10",
        x_train=_images(train.data),
        y_train=_labels(train.labels),
        classes=classes,
        modality="image",
        x_test=_images(test.data),
        y_test=_labels(test.labels),
        hflip=True,
        default_model="wrn28_2",
        # The labeled split is the candidate pool and the unlabeled split is unlabeled, as for user data.
        labels_are_given=True,
    )


def _no_options(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise ConfigError(f"dataset {name!r} takes no option {sorted(kw)[0]!r}")


# ------------------------------------------------------------------------------------------ entry point


def load_dataset(
    name_or_path: str,
    root: str | None = None,
    download: bool = False,
    strict: bool = False,
    image_size: int | None = None,
) -> DataBundle:
    """Load a built-in dataset by name, or user data from an image folder, a .csv manifest or an .npz file.

    A registered name wins over a same-named folder in the working directory (write `./digits` for it).
    `root` is where built-in datasets live (and are downloaded to with `download=True`); `strict` makes an
    unreadable user image an error instead of a skipped file; `image_size` resizes images to a square.
    Everything is held in memory.
    """
    from fewlabels.data import formats

    if image_size is not None and image_size < 1:
        raise ConfigError(f"--image-size must be a positive number of pixels, got {image_size}")
    try:
        loader = DATASETS.get(name_or_path)
    except ConfigError as unknown:
        path = Path(name_or_path).expanduser()
        if path.is_dir():
            return formats.load_image_folder(path, strict=strict, image_size=image_size)
        if path.is_file():
            suffix = path.suffix.lower()
            if suffix == ".csv":
                return formats.load_csv_manifest(path, strict=strict, image_size=image_size)
            if suffix == ".npz":
                return formats.load_npz(path, image_size=image_size)
            raise ConfigError(
                f"cannot read {path}: a dataset file must be a .csv manifest or an .npz archive "
                "(or give a folder of images)"
            ) from None
        if os.sep in name_or_path or "/" in name_or_path or path.suffix.lower() in (".csv", ".npz"):
            raise DataError(f"{name_or_path}: no such file or folder") from None
        raise ConfigError(f"{unknown}; or give a path to an image folder, a .csv manifest or an .npz file") from None
    bundle = loader(root=root, download=download)
    if image_size is not None:
        if bundle.modality != "image":
            raise ConfigError(f"--image-size applies to images, but {bundle.name} is {bundle.modality} data")
        bundle = _resize_bundle(bundle, image_size)
    return bundle


def _resize_bundle(bundle: DataBundle, size: int) -> DataBundle:
    import dataclasses

    changes = {
        k: resize_images(getattr(bundle, k), size)
        for k in ("x_train", "x_test", "x_val")
        if getattr(bundle, k) is not None
    }
    return dataclasses.replace(bundle, **changes)


def load_data(data: Any) -> DataBundle:
    """The bundle a run's `data` config section describes: `load_dataset` plus its class subset (data.classes).

    Every place that needs a run's rows (training, evaluation, pseudo-labelling) loads them through this, so row
    indices (split.json, pseudo-label shards) mean the same thing everywhere.
    """
    bundle = load_dataset(
        data.dataset, root=data.data_root, download=data.download, strict=data.strict, image_size=data.image_size
    )
    classes = getattr(data, "classes", None)
    return bundle.keep_classes(list(classes)) if classes else bundle
