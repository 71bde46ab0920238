"""Writers of tiny datasets in real on-disk formats (IDX, CIFAR pickles, SVHN .mat, STL-10 binaries, images).

torchvision md5-checks every file it reads against the published archives, which tiny test files can never
match. The tests therefore monkeypatch the module-level `check_integrity` of torchvision's cifar/svhn/stl10
modules to a plain "file exists" check (see `trust_torchvision_files`). Patching the classes'
`_check_integrity` would not be enough: CIFAR's `_load_meta` calls `check_integrity` on batches.meta directly.
Everything else (file names, layouts, parsing) is torchvision's real code.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

UNPICKLED: list[str] = []


def mark_unpickled() -> str:
    """Called if a test's booby-trapped pickle is ever loaded."""
    UNPICKLED.append("unpickled")
    return "unpickled"


class Trap:
    """Pickles to a call of `mark_unpickled`, so loading it leaves a trace."""

    def __reduce__(self):
        return (mark_unpickled, ())


def trust_torchvision_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision accept files whose md5 differs from the published one (they only need to exist)."""
    import torchvision.datasets.cifar
    import torchvision.datasets.stl10
    import torchvision.datasets.svhn

    def exists(fpath: str, md5: str | None = None) -> bool:
        return os.path.isfile(fpath)

    for module in (torchvision.datasets.cifar, torchvision.datasets.svhn, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", exists)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file, gzip-compressed when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fashion_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz_test: bool = False) -> dict:
    """Tiny Fashion-MNIST: train files gzip-compressed, test files raw unless gz_test."""
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    test_ext = ".gz" if gz_test else ""
    write_idx(folder / "train-images-idx3-ubyte.gz", arrays["x_train"])
    write_idx(folder / "train-labels-idx1-ubyte.gz", arrays["y_train"])
    write_idx(folder / f"t10k-images-idx3-ubyte{test_ext}", arrays["x_test"])
    write_idx(folder / f"t10k-labels-idx1-ubyte{test_ext}", arrays["y_test"])
    return arrays


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """NCHW uint8 -> CIFAR's rows of 3072 bytes (1024 red, 1024 green, 1024 blue, each row-major)."""
    return images.reshape(len(images), -1)


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6) -> dict:
    """Tiny CIFAR-10 in cifar-10-batches-py/: five data batches, a test batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    xs, ys = [], []
    for b in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3, 32, 32), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        with open(folder / f"data_batch_{b}", "wb") as f:
            pickle.dump({"batch_label": f"batch {b}", "labels": y, "data": _cifar_rows(x)}, f)
        xs.append(x)
        ys += y
    xt = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    yt = [int(v) for v in rng.integers(0, 10, n_test)]
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "test", "labels": yt, "data": _cifar_rows(xt)}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)
    return {
        "x": np.concatenate(xs),
        "y": np.array(ys),
        "x_test": xt,
        "y_test": np.array(yt),
        "classes": names,
    }


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 8) -> dict:
    """Tiny CIFAR-100 in cifar-100-python/: train, test and meta with fine and coarse labels."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(2)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        with open(folder / split, "wb") as f:
            pickle.dump({"data": _cifar_rows(x), "fine_labels": fine, "coarse_labels": [v // 5 for v in fine]}, f)
        out[split] = (x, np.array(fine))
    names = [f"class_{i:02d}" for i in range(100)]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}, f)
    return {"x": out["train"][0], "y": out["train"][1], "x_test": out["test"][0], "y_test": out["test"][1]}


def write_svhn(root: Path, n_train: int = 12, n_test: int = 7) -> dict:
    """Tiny SVHN {train,test}_32x32.mat: X is (32, 32, 3, N), y is (N, 1) with 10 meaning digit 0."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        digits = np.arange(n) % 10
        mat_y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        # The .mat layout is (H, W, C, N); torchvision turns it into NCHW with transpose (3, 2, 0, 1).
        mat_x = x.transpose(2, 3, 1, 0)
        savemat(root / f"{split}_32x32.mat", {"X": mat_x, "y": mat_y})
        out[split] = (x, digits)
    return {"x": out["train"][0], "y": out["train"][1], "x_test": out["test"][0], "y_test": out["test"][1]}


def write_stl10(root: Path, n_train: int = 10, n_unlabeled: int = 6, n_test: int = 5) -> dict:
    """Tiny STL-10 in stl10_binary/: column-major 96x96 RGB images and 1-based uint8 labels."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(4)

    def images(n: int, name: str) -> np.ndarray:
        x = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)
        # STL-10 stores each channel column by column (Fortran order), i.e. as (N, C, W, H) row-major.
        (folder / name).write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        return x

    x = images(n_train, "train_X.bin")
    y = np.arange(n_train) % 10
    (folder / "train_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    xu = images(n_unlabeled, "unlabeled_X.bin")
    xt = images(n_test, "test_X.bin")
    yt = (np.arange(n_test) * 3) % 10
    (folder / "test_y.bin").write_bytes((yt + 1).astype(np.uint8).tobytes())
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return {"x": x, "y": y, "x_unlabeled": xu, "x_test": xt, "y_test": yt, "classes": names}


def write_image(path: Path, color: tuple[int, ...] | int, size: tuple[int, int] = (6, 5), mode: str = "RGB") -> None:
    """A solid-color image (size is width x height) saved in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def write_corrupt_images(folder: Path) -> list[Path]:
    """A garbage .png and a truncated .png (valid header, cut-off pixel data)."""
    folder.mkdir(parents=True, exist_ok=True)
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not an image at all")
    full = folder / "full.png"
    rng = np.random.default_rng(5)
    # Noise does not compress, so cutting the file in half really removes pixel data.
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(full)
    truncated = folder / "truncated.png"
    data = full.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    full.unlink()
    return [garbage, truncated]
