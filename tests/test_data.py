"""Tests of fewlabels.data: built-in datasets, user formats (folder, CSV, npz) and splits."""

from __future__ import annotations

import dataclasses
import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    UNPICKLED,
    Trap,
    trust_torchvision_files,
    write_cifar10,
    write_cifar100,
    write_corrupt_images,
    write_fashion_mnist,
    write_idx,
    write_image,
    write_stl10,
    write_svhn,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fewlabels.api import fit_inputs
from fewlabels.data import (
    DATASETS,
    DataBundle,
    Split,
    check_unlabeled,
    load_dataset,
    make_split,
)
from fewlabels.data.formats import image_files_under, manifest_paths, sort_class_names
from fewlabels.data.sources import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, read_idx
from fewlabels.errors import ConfigError, DataError

# ================================================================================================ built-ins


def test_registry_lists_every_builtin_with_a_one_line_doc() -> None:
    names = DATASETS.names()
    builtins = ["digits", "wine", "breast_cancer", "iris", "mnist1d", "fashion-mnist", "cifar10", "cifar100", "svhn"]
    assert names == sorted([*builtins, "stl10"])
    for name in names:
        doc = DATASETS.get(name).__doc__
        assert doc and doc.strip().splitlines()[0].strip(), name


def test_digits_shapes_and_fixed_stratified_test_split() -> None:
    np.random.seed(123)
    b = load_dataset("digits")
    np.random.seed(999)
    again = load_dataset("digits")
    assert b.x_train.dtype == torch.uint8 and b.x_train.shape[1:] == (1, 8, 8)
    assert len(b.x_train) + len(b.x_test) == 1797
    assert int(b.x_train.max()) == 255 and int(b.x_train.min()) == 0
    assert b.classes == [str(i) for i in range(10)]
    assert b.y_train.dtype == torch.int64 and set(b.y_train.tolist()) == set(range(10))
    assert not b.hflip and b.default_model == "cnn" and b.modality == "image" and not b.labels_are_given
    # Stratified: each class keeps round(30%) of its images in test.
    all_y = torch.cat([b.y_train, b.y_test])
    for c in range(10):
        n_c = int((all_y == c).sum())
        assert int((b.y_test == c).sum()) == round(0.3 * n_c)
    # Fixed: neither the global numpy seed nor a second load moves the split.
    assert torch.equal(b.x_test, again.x_test) and torch.equal(b.y_train, again.y_train)


@pytest.mark.parametrize(
    ("name", "features", "classes"),
    [
        ("wine", 13, ["class_0", "class_1", "class_2"]),
        ("breast_cancer", 30, ["malignant", "benign"]),
        ("iris", 4, ["setosa", "versicolor", "virginica"]),
    ],
)
def test_sklearn_tables_are_vectors_with_a_fixed_stratified_disjoint_test_split(
    name: str, features: int, classes: list[str]
) -> None:
    import sklearn.datasets

    original = getattr(sklearn.datasets, f"load_{name}")()
    np.random.seed(123)
    b = load_dataset(name)
    np.random.seed(999)
    again = load_dataset(name.replace("_", "-"))  # either spelling
    assert b.name == name and b.classes == classes and b.num_classes == len(classes)
    assert b.modality == "vector" and b.default_model == "mlp" and not b.hflip and not b.labels_are_given
    assert b.x_train.dtype == torch.float32 and b.x_train.shape[1:] == (features,) and b.x_test.shape[1:] == (features,)
    assert b.y_train.dtype == torch.int64 and len(b.x_train) + len(b.x_test) == len(original.target)
    # Stratified: each class keeps round(30%) of its rows in test.
    counts = np.bincount(original.target)
    assert np.bincount(b.y_test.numpy()).tolist() == [round(0.3 * n) for n in counts]
    # Disjoint and complete: train and test rows together are exactly the original rows (with their labels), each
    # once (iris holds duplicate rows, so this compares sorted multisets rather than sets).
    ours = np.concatenate([np.column_stack([b.x_train, b.y_train]), np.column_stack([b.x_test, b.y_test])])
    theirs = np.column_stack([original.data.astype(np.float32), original.target])
    assert np.array_equal(ours[np.lexsort(ours.T[::-1])], theirs[np.lexsort(theirs.T[::-1])])
    # Stable: neither the global numpy seed nor a second load moves the split.
    assert torch.equal(b.x_test, again.x_test) and torch.equal(b.y_train, again.y_train)
    assert torch.equal(b.x_train, again.x_train) and torch.equal(b.y_test, again.y_test)
    with pytest.raises(ConfigError, match="takes no option"):
        DATASETS.get(name)(size=3)


def test_mnist1d_generated_offline_with_its_own_split(tmp_path: Path) -> None:
    np.random.seed(7)
    random.seed(7)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(7)
    random.seed(7)
    b = load_dataset("mnist1d")
    # Loading must not reseed the caller's global generators (mnist1d's make_dataset does).
    assert np.random.random() == expected_np and random.random() == expected_py
    assert b.modality == "vector" and b.default_model == "mlp"
    assert b.x_train.shape == (4000, 40) and b.x_train.dtype == torch.float32
    assert b.x_test.shape == (1000, 40) and b.y_test.shape == (1000,)
    assert b.y_train.dtype == torch.int64 and set(b.y_train.tolist()) == set(range(10))
    assert b.input_shape == (40,)
    # With a root, the generated arrays are cached as an .npz and read back identically.
    cached = load_dataset("mnist1d", root=str(tmp_path))
    files = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(files) == 1
    reread = load_dataset("mnist1d", root=str(tmp_path))
    assert torch.equal(cached.x_train, b.x_train) and torch.equal(reread.x_train, b.x_train)


def test_mnist1d_bundle_tensors_do_not_alias_the_cache() -> None:
    a = load_dataset("mnist1d")
    a.x_train.zero_()
    assert load_dataset("mnist1d").x_train.abs().sum() > 0


def test_fashion_mnist_from_tiny_idx_files(tmp_path: Path) -> None:
    arrays = write_fashion_mnist(tmp_path, n_train=30, n_test=10)
    b = load_dataset("fashion-mnist", root=str(tmp_path))
    assert b.x_train.shape == (30, 1, 28, 28) and b.x_train.dtype == torch.uint8
    assert b.x_test.shape == (10, 1, 28, 28)
    assert np.array_equal(b.x_train[:, 0].numpy(), arrays["x_train"])
    assert np.array_equal(b.y_test.numpy(), arrays["y_test"])
    assert b.classes == FASHION_MNIST_CLASSES and b.hflip and b.default_model == "cnn"
    assert b.y_train.dtype == torch.int64 and int(b.y_train.max()) == 9 and int(b.y_train.min()) == 0


def test_fashion_mnist_in_torchvision_layout_and_download_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    class FakeFashionMNIST:
        """Stands in for torchvision's class: 'downloads' by writing IDX files where torchvision puts them."""

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((root, download))
            write_fashion_mnist(Path(root) / "FashionMNIST" / "raw", n_train=20, n_test=10, gz_test=True)

    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", FakeFashionMNIST)
    with pytest.raises(DataError, match="Fashion-MNIST files .* not found"):
        load_dataset("fashion-mnist", root=str(tmp_path), download=False)
    assert calls == []
    b = load_dataset("fashion-mnist", root=str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True)] and len(b.x_train) == 20
    # A second load finds the files in torchvision's layout without downloading again.
    assert len(load_dataset("fashion-mnist", root=str(tmp_path), download=True).x_test) == 10
    assert len(calls) == 1


def test_fashion_mnist_missing_files_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewlabels.data import sources

    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", str(tmp_path / "no-package"))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist", root=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert str(tmp_path / "nowhere") in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg and "--download" in msg
    # With the system package installed, the fix is to stop pointing elsewhere.
    write_fashion_mnist(tmp_path / "package", n_train=20, n_test=10)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", str(tmp_path / "package"))
    with pytest.raises(DataError, match=r"drop --data-root to read the system package's copy in .*package"):
        load_dataset("fashion-mnist", root=str(tmp_path / "nowhere"))


def test_idx_reader_rejects_truncated_and_foreign_files(tmp_path: Path) -> None:
    good = tmp_path / "a-idx3-ubyte"
    write_idx(good, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    assert read_idx(good).shape == (2, 3, 4)
    cut = tmp_path / "cut"
    cut.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(cut)
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x89PNG....")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(junk)
    header_cut = tmp_path / "header-cut"
    header_cut.write_bytes(good.read_bytes()[:9])  # magic and 3 dimensions promised, 1 given in part
    with pytest.raises(DataError, match="truncated inside its header"):
        read_idx(header_cut)


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_debian_files() -> None:
    b = load_dataset("fashion-mnist")
    assert b.x_train.shape == (60000, 1, 28, 28) and b.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(b.y_train).tolist() == [6000] * 10
    assert torch.bincount(b.y_test).tolist() == [1000] * 10


def test_cifar10_from_real_format_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trust_torchvision_files(monkeypatch)
    ref = write_cifar10(tmp_path)
    b = load_dataset("cifar10", root=str(tmp_path))
    assert b.x_train.shape == (20, 3, 32, 32) and b.x_train.dtype == torch.uint8
    assert b.x_train.is_contiguous()
    # Pixel-exact: the CHW layout of the pickled rows survives torchvision's HWC round trip.
    assert np.array_equal(b.x_train.numpy(), ref["x"]) and np.array_equal(b.x_test.numpy(), ref["x_test"])
    assert b.y_train.tolist() == ref["y"].tolist() and b.y_test.tolist() == ref["y_test"].tolist()
    assert b.classes == ref["classes"] and b.default_model == "wrn28_2" and b.hflip


def test_cifar100_from_real_format_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trust_torchvision_files(monkeypatch)
    ref = write_cifar100(tmp_path)
    b = load_dataset("cifar100", root=str(tmp_path))
    assert b.num_classes == 100 and b.classes[7] == "class_07"
    assert np.array_equal(b.x_train.numpy(), ref["x"]) and b.y_train.tolist() == ref["y"].tolist()
    assert b.x_test.shape == (8, 3, 32, 32) and b.default_model == "wrn28_8"


def test_svhn_from_real_format_mat_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trust_torchvision_files(monkeypatch)
    ref = write_svhn(tmp_path)
    b = load_dataset("svhn", root=str(tmp_path))
    assert b.x_train.shape == (12, 3, 32, 32) and b.x_test.shape == (7, 3, 32, 32)
    assert np.array_equal(b.x_train.numpy(), ref["x"])
    # SVHN stores digit 0 as label 10; the bundle has 0.
    assert b.y_train.tolist() == ref["y"].tolist() and int(b.y_train.min()) == 0
    assert not b.hflip and b.default_model == "wrn28_2"


def test_stl10_labeled_unlabeled_and_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trust_torchvision_files(monkeypatch)
    ref = write_stl10(tmp_path)
    b = load_dataset("stl10", root=str(tmp_path))
    assert b.x_train.shape == (16, 3, 96, 96) and b.x_test.shape == (5, 3, 96, 96)
    assert np.array_equal(b.x_train[:10].numpy(), ref["x"])
    assert np.array_equal(b.x_train[10:].numpy(), ref["x_unlabeled"])
    assert b.y_train.tolist() == ref["y"].tolist() + [-1] * 6
    assert b.y_test.tolist() == ref["y_test"].tolist()
    assert b.labels_are_given and b.classes == ref["classes"] and b.default_model == "wrn28_2"
    split = make_split(b, val_per_class=0)
    assert split.labeled.tolist() == list(range(10)) and split.unlabeled.tolist() == list(range(16))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "stl10"])
def test_torchvision_sets_missing_files_say_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError) as e:
        load_dataset(name, root=str(tmp_path), download=False)
    assert "--download" in str(e.value) and str(tmp_path) in str(e.value)


def test_unknown_name_suggests_close_matches_and_missing_path_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_dataset("cifar")
    assert "cifar10" in str(e.value) and "image folder" in str(e.value)
    with pytest.raises(ConfigError, match="fashion-mnist"):
        load_dataset("fashon-mnist")
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "missing.npz"))
    other = tmp_path / "data.txt"
    other.write_text("x")
    with pytest.raises(ConfigError, match=r"\.csv manifest or an \.npz"):
        load_dataset(str(other))


def test_image_size_resizes_builtin_images_and_rejects_vectors() -> None:
    b = load_dataset("digits", image_size=16)
    assert b.x_train.shape[1:] == (1, 16, 16) and b.x_test.shape[1:] == (1, 16, 16)
    assert b.x_train.dtype == torch.uint8
    with pytest.raises(ConfigError, match="image-size"):
        load_dataset("mnist1d", image_size=16)


# ============================================================================================ image folder


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "pets"
    for i in range(3):
        write_image(root / "labeled" / "cat" / f"c{i}.png", (255, 0, 0))
        write_image(root / "labeled" / "dog" / f"d{i}.jpg", (0, 0, 255))
    for i in range(4):
        write_image(root / "unlabeled" / "batch" / "deeper" / f"u{i}.png", (0, 255, 0))
    write_image(root / "val" / "dog" / "v0.png", (0, 0, 255))
    write_image(root / "val" / "cat" / "v1.png", (255, 0, 0))
    write_image(root / "test" / "cat" / "t0.png", (255, 0, 0))
    return root


def test_image_folder_labels_unlabeled_val_test(tmp_path: Path) -> None:
    b = load_dataset(str(_folder(tmp_path)))
    assert b.name == "pets" and b.classes == ["cat", "dog"] and b.labels_are_given
    assert b.y_train.tolist() == [0, 0, 0, 1, 1, 1, -1, -1, -1, -1]
    assert b.x_train.shape == (10, 3, 5, 6) and b.x_train.dtype == torch.uint8
    # Channel order: cats are red, dogs blue (JPEG is lossy, so compare loosely), unlabeled green.
    assert b.x_train[0, :, 0, 0].tolist() == [255, 0, 0]
    assert b.x_train[3, 2, 0, 0] > 240 and b.x_train[3, 0, 0, 0] < 15
    assert b.x_train[6, :, 0, 0].tolist() == [0, 255, 0]
    assert b.y_val.tolist() == [0, 1] and b.x_val.shape == (2, 3, 5, 6)
    assert b.y_test.tolist() == [0] and b.skipped_files == []


def test_image_folder_grayscale_only_when_all_gray(tmp_path: Path) -> None:
    root = tmp_path / "gray"
    write_image(root / "labeled" / "a" / "0.png", 10, mode="L")
    write_image(root / "labeled" / "b" / "1.png", 200, mode="L")
    write_image(root / "unlabeled" / "2.png", 90, mode="L")
    b = load_dataset(str(root))
    assert b.x_train.shape == (3, 1, 5, 6) and b.x_train[:, 0, 0, 0].tolist() == [10, 200, 90]
    write_image(root / "unlabeled" / "3.png", (1, 2, 3))
    mixed = load_dataset(str(root))
    assert mixed.x_train.shape == (4, 3, 5, 6)
    # Gray images become RGB with equal channels.
    assert mixed.x_train[0, :, 0, 0].tolist() == [10, 10, 10] and mixed.x_train[3, :, 0, 0].tolist() == [
        1,
        2,
        3,
    ]


def test_image_folder_sizes_must_match_unless_image_size(tmp_path: Path) -> None:
    root = tmp_path / "sizes"
    write_image(root / "labeled" / "a" / "0.png", (9, 9, 9), size=(8, 8))
    write_image(root / "labeled" / "b" / "1.png", (9, 9, 9), size=(12, 10))
    with pytest.raises(DataError) as e:
        load_dataset(str(root))
    assert "--image-size" in str(e.value) and "12x10" in str(e.value)
    b = load_dataset(str(root), image_size=4)
    assert b.x_train.shape == (2, 3, 4, 4)


def test_image_folder_unknown_val_class_names_class_and_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    write_image(root / "val" / "ferret" / "f.png", (1, 1, 1))
    with pytest.raises(DataError) as e:
        load_dataset(str(root))
    assert "'ferret'" in str(e.value) and str(root / "val") in str(e.value)


def test_image_folder_requires_labeled_and_class_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="labeled/"):
        load_dataset(str(tmp_path / "empty"))
    root = _folder(tmp_path)
    write_image(root / "labeled" / "loose.png", (1, 1, 1))
    with pytest.raises(DataError, match="not inside a class folder"):
        load_dataset(str(root))


def test_corrupt_images_skipped_with_one_warning_or_strict_error(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    bad = write_corrupt_images(root / "unlabeled" / "broken")
    with pytest.warns(UserWarning) as record:
        b = load_dataset(str(root))
    skipped_warnings = [w for w in record if "unreadable" in str(w.message)]
    assert len(skipped_warnings) == 1 and "skipped 2" in str(skipped_warnings[0].message)
    assert sorted(b.skipped_files) == sorted(str(p) for p in bad)
    assert len(b.x_train) == 10
    with pytest.raises(DataError) as e:
        load_dataset(str(root), strict=True)
    assert "--strict" in str(e.value) and any(str(p) in str(e.value) for p in bad)


def test_folder_with_non_image_files_warns_but_loads(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / "unlabeled" / "notes.txt").write_text("hello")
    (root / "unlabeled" / ".DS_Store").write_bytes(b"\0")
    with pytest.warns(UserWarning, match="not images"):
        b = load_dataset(str(root))
    assert len(b.x_train) == 10 and b.skipped_files == []


# ============================================================================================ CSV manifest


def test_csv_manifest_relative_absolute_unlabeled_and_splits(tmp_path: Path) -> None:
    img = tmp_path / "imgs"
    for i in range(6):
        write_image(img / f"{i}.png", (i * 40, 0, 0))
    abs_path = img / "5.png"
    csv = tmp_path / "manifest.csv"
    csv.write_text(
        "path,label,split\n"
        "imgs/0.png,10,train\n"
        "imgs/1.png,2,\n"
        "imgs/2.png,,train\n"
        f"{abs_path},2,train\n"
        "imgs/3.png,10,val\n"
        "imgs/4.png,2,test\n"
    )
    b = load_dataset(str(csv))
    # Integer labels sort numerically: '2' before '10'.
    assert b.classes == ["2", "10"] and b.labels_are_given and b.name == "manifest"
    assert b.y_train.tolist() == [1, 0, -1, 0]
    assert b.x_train[3, 0, 0, 0] == 200 and b.x_train[2, 0, 0, 0] == 80
    assert b.y_val.tolist() == [1] and b.y_test.tolist() == [0]


def test_csv_without_split_column_and_missing_file_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 5, mode="L")
    write_image(tmp_path / "b.png", 7, mode="L")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\na.png,cat\nb.png,\ngone.png,cat\n")
    with pytest.warns(UserWarning, match="skipped 1 listed file.* do not exist: .*gone.png; fix the paths"):
        b = load_dataset(str(csv))
    assert b.classes == ["cat"] and b.y_train.tolist() == [0, -1] and b.x_train.shape == (2, 1, 5, 6)
    assert b.skipped_files == [str(tmp_path / "gone.png")]
    with pytest.raises(DataError, match="gone.png"):
        load_dataset(str(csv), strict=True)


def test_csv_written_on_windows_finds_its_files(tmp_path: Path) -> None:
    write_image(tmp_path / "imgs" / "cat" / "0.png", 5, mode="L")
    write_image(tmp_path / "imgs" / "u" / "1.png", 7, mode="L")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\r\nimgs\\cat\\0.png,cat\r\nimgs\\u\\1.png,\r\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped
        b = load_dataset(str(csv))
    assert b.y_train.tolist() == [0, -1] and b.skipped_files == []
    assert manifest_paths(csv) == [tmp_path / "imgs" / "cat" / "0.png", tmp_path / "imgs" / "u" / "1.png"]


def test_image_folder_follows_symlinked_folders_once(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    pool = tmp_path / "pool"
    for i in range(3):
        write_image(pool / f"p{i}.png", (0, 255, 0))
    (root / "unlabeled" / "more").symlink_to(pool, target_is_directory=True)
    (pool / "loop").symlink_to(pool, target_is_directory=True)  # a link loop is read once, not forever
    b = load_dataset(str(root))
    assert (b.y_train == -1).sum().item() == 4 + 3 and b.skipped_files == []
    assert len(image_files_under(root / "unlabeled")) == 7


def test_csv_val_label_outside_classes_names_row(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", 5, mode="L")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split\na.png,cat,train\na.png,dog,train\na.png,cow,val\n")
    with pytest.raises(DataError) as e:
        load_dataset(str(csv))
    msg = str(e.value)
    assert "label 'cow' in row 4" in msg and "['cat', 'dog']" in msg
    assert "add labeled training examples of it or fix the label" in msg


def test_csv_refuses_a_file_in_two_splits_and_warns_on_marker_labels(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write_image(tmp_path / f"{name}.png", 5, mode="L")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split\na.png,cat,train\nb.png,dog,train\n./a.png,cat,test\n")
    with pytest.raises(DataError, match=r"a.png is listed as train \(row 2\) and as test \(row 4\).*one split"):
        load_dataset(str(csv))
    csv.write_text("path,label\na.png,cat\nb.png,-1\nc.png,-1\n")  # the .npz convention, not the CSV one
    with pytest.warns(UserWarning, match=r"label '-1' \(2 rows\) is treated as a class.*leave their label empty"):
        b = load_dataset(str(csv))
    assert b.classes == ["-1", "cat"] and b.y_train.tolist() == [1, 0, 0]


def test_integer_class_names_sort_the_same_in_every_process() -> None:
    assert sort_class_names(["10", "01", "9", "1"]) == ["01", "1", "9", "10"]


def test_csv_bad_header_and_bad_split(tmp_path: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text("file,class\na.png,cat\n")
    with pytest.raises(DataError, match="path,label"):
        load_dataset(str(csv))
    csv.write_text("path,label,split\na.png,cat,holdout\n")
    with pytest.raises(DataError, match="'holdout'"):
        load_dataset(str(csv))


# =================================================================================================== npz


def test_npz_vectors_with_classes_val_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "table.npz"
    np.savez(
        path,
        x=rng.normal(size=(8, 5)),
        y=np.array([0, 1, 2, -1, -1, 0, 1, 2]),
        x_val=rng.normal(size=(3, 5)),
        y_val=np.array([0, 1, 2]),
        x_test=rng.normal(size=(2, 5)),
        y_test=np.array([2, 0]),
        classes=np.array(["low", "mid", "high"]),
    )
    b = load_dataset(str(path))
    assert b.modality == "vector" and b.default_model == "mlp" and b.x_train.dtype == torch.float32
    assert b.classes == ["low", "mid", "high"] and b.y_train.tolist() == [0, 1, 2, -1, -1, 0, 1, 2]
    assert b.x_val.shape == (3, 5) and b.y_test.tolist() == [2, 0] and b.labels_are_given


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((4, 6, 5), (4, 1, 6, 5)),
        ((4, 3, 6, 5), (4, 3, 6, 5)),
        ((4, 6, 5, 3), (4, 3, 6, 5)),
        ((4, 1, 6, 5), (4, 1, 6, 5)),
    ],
)
def test_npz_image_layouts(tmp_path: Path, shape: tuple[int, ...], expected: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", x=x, y=np.array([0, 1, -1, 1]))
    b = load_dataset(str(tmp_path / "imgs.npz"))
    assert b.modality == "image" and b.x_train.shape == expected and b.classes == ["0", "1"]
    nchw = x.transpose(0, 3, 1, 2) if shape[-1] == 3 else x.reshape(expected)  # HWC moved; the others in place
    assert np.array_equal(b.x_train.numpy(), nchw)


def test_npz_float_images_scaled_and_out_of_range_refused(tmp_path: Path) -> None:
    x = np.zeros((2, 3, 4, 4), dtype=np.float32)
    x[1] = 1.0
    x[0, 0] = 0.5
    np.savez(tmp_path / "f.npz", x=x, y=np.array([0, 1]))
    b = load_dataset(str(tmp_path / "f.npz"))
    assert b.x_train.dtype == torch.uint8 and int(b.x_train[1].min()) == 255 and int(b.x_train[0, 0, 0, 0]) == 128
    np.savez(tmp_path / "g.npz", x=x * 255, y=np.array([0, 1]))
    with pytest.raises(DataError, match="divide by 255"):
        load_dataset(str(tmp_path / "g.npz"))
    x[0, 1, 2, 2] = np.nan
    np.savez(tmp_path / "n.npz", x=x, y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"values in \[nan, nan\]; float images must lie in \[0, 1\]"):
        load_dataset(str(tmp_path / "n.npz"))


def test_npz_float64_images_are_converted_in_row_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A float64 (N, H, W, C) array converts chunk by chunk to exactly the pixels of one whole-array conversion."""
    from fewlabels.data import formats

    x = np.random.default_rng(0).random((7, 5, 4, 3))  # float64, channels last
    x[3, 0, 0] = [0.0, 1.0, 0.5]
    np.savez(tmp_path / "f64.npz", x=x, y=np.array([0, 1, -1, 1, 0, -1, 1]))
    monkeypatch.setattr(formats, "CONVERT_CHUNK_BYTES", 2 * 5 * 4 * 3 * 8)  # two rows a chunk: 4 chunks, one short
    b = load_dataset(str(tmp_path / "f64.npz"))
    assert b.x_train.dtype == torch.uint8 and b.x_train.is_contiguous()
    assert np.array_equal(b.x_train.numpy(), np.round(x.transpose(0, 3, 1, 2) * 255.0).astype(np.uint8))
    assert b.x_train[3, :, 0, 0].tolist() == [0, 255, 128]
    # Booleans are [0, 1] images: 0 or 255, the pixels `fewlabels predict` makes of the same array.
    mask = np.zeros((2, 1, 4, 4), dtype=bool)
    mask[1, 0, :2] = True
    np.savez(tmp_path / "b.npz", x=mask, y=np.array([0, 1]))
    b = load_dataset(str(tmp_path / "b.npz"))
    assert b.x_train.dtype == torch.uint8 and sorted(b.x_train.unique().tolist()) == [0, 255]
    assert np.array_equal(b.x_train.numpy(), mask.astype(np.uint8) * 255)
    assert np.array_equal(b.x_train.numpy(), fit_inputs(mask, (1, 4, 4)))  # the same pixels as at prediction


@pytest.mark.parametrize(
    ("y", "classes", "needle"),
    [
        (np.array([0, 1, 5]), np.array(["a", "b", "c"]), "label 5"),
        (np.array([0, 1, -2]), None, "label -2"),
        (np.array([0.0, 1.5, 1.0]), None, "1.5"),
        (np.array(["a", "b", "a"]), None, "dtype"),
    ],
)
def test_npz_bad_labels_name_the_value(tmp_path: Path, y: np.ndarray, classes: np.ndarray | None, needle: str) -> None:
    arrays = {"x": np.zeros((3, 4)), "y": y}
    if classes is not None:
        arrays["classes"] = classes
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "bad.npz"))
    msg = str(e.value)
    assert needle in msg and ("fix the labels" in msg or "map names to indices" in msg)


def test_npz_never_unpickles_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([Trap(), Trap()], dtype=object), y=np.array([0, 1]))
    UNPICKLED.clear()
    with pytest.raises(DataError, match="pickle"):
        load_dataset(str(path))
    assert UNPICKLED == []


def test_npz_missing_y_and_test_labels_must_be_known(tmp_path: Path) -> None:
    np.savez(tmp_path / "nox.npz", x=np.zeros((2, 3)))
    with pytest.raises(DataError, match="'y'"):
        load_dataset(str(tmp_path / "nox.npz"))
    np.savez(tmp_path / "t.npz", x=np.zeros((2, 3)), y=np.array([0, 1]), x_test=np.zeros((1, 3)), y_test=[-1])
    with pytest.raises(DataError, match="must be labeled"):
        load_dataset(str(tmp_path / "t.npz"))
    np.savez(tmp_path / "u.npz", x=np.zeros((2, 3)), y=np.array([0, 1]), x_test=np.zeros((1, 3)))
    with pytest.raises(DataError, match=r"has x_test without y_test: save both, e.g. np.savez\(path, ..., x_test="):
        load_dataset(str(tmp_path / "u.npz"))


def test_channel_stats_match_a_float_computation_and_are_cached() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (9000, 3, 4, 4), dtype=torch.uint8, generator=g)  # three chunks of rows
    x[:, 2] = 7  # a constant channel keeps scale 1
    b = DataBundle(name="t", x_train=x, y_train=torch.zeros(9000, dtype=torch.long), classes=["a"])
    mean, std = b.channel_stats()
    ref = x.double() / 255
    assert mean == pytest.approx(ref.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std[:2] == pytest.approx(ref.std(dim=(0, 2, 3))[:2].tolist(), abs=1e-6) and std[2] == 1.0
    assert b.channel_stats() is b.channel_stats()  # computed once (vectors: test_estimator)


# ================================================================================================= splits


def _bundle(counts: list[int], unlabeled: int = 0, given: bool = False, with_val: bool = False) -> DataBundle:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)] + [np.full(unlabeled, -1)]).astype(np.int64)
    y = np.random.default_rng(42).permutation(y)
    x_val = torch.zeros(len(counts), 2) if with_val else None
    y_val = torch.arange(len(counts)) if with_val else None
    return DataBundle(
        name="toy",
        x_train=torch.zeros(len(y), 2),
        y_train=torch.from_numpy(y),
        classes=[f"c{i}" for i in range(len(counts))],
        modality="vector",
        x_val=x_val,
        y_val=y_val,
        labels_are_given=given,
    )


def _counts(bundle: DataBundle, idx: np.ndarray) -> list[int]:
    return np.bincount(bundle.y_train.numpy()[idx], minlength=bundle.num_classes).tolist()


def test_builtin_split_stratified_counts_and_disjointness() -> None:
    b = _bundle([100, 120, 90])
    s = make_split(b, labels_per_class=4, seed=3)
    # Default validation: max(1, min(500, smallest class // 10)) = 9 per class.
    assert _counts(b, s.val) == [9, 9, 9]
    assert _counts(b, s.labeled) == [4, 4, 4]
    assert np.intersect1d(s.val, s.labeled).size == 0 and np.intersect1d(s.val, s.unlabeled).size == 0
    # FixMatch convention: the unlabeled pool is every non-validation row, labeled ones included.
    assert np.array_equal(s.unlabeled, np.setdiff1d(np.arange(310), s.val))
    assert np.isin(s.labeled, s.unlabeled).all()
    assert s.labeled.dtype == np.int64 and np.all(np.diff(s.labeled) > 0)
    strict_pool = make_split(b, labels_per_class=4, seed=3, unlabeled_includes_labeled=False)
    assert np.intersect1d(strict_pool.unlabeled, strict_pool.labeled).size == 0
    assert len(strict_pool.unlabeled) == 310 - 27 - 12


def test_builtin_split_without_label_count_labels_everything_left() -> None:
    b = _bundle([30, 40])
    s = make_split(b, val_per_class=5)
    assert _counts(b, s.val) == [5, 5] and _counts(b, s.labeled) == [25, 35]


def test_default_val_caps_at_500() -> None:
    b = _bundle([6000, 5100])
    s = make_split(b, labels_per_class=1)
    assert _counts(b, s.val) == [500, 500]


def test_split_reproducible_and_seed_dependent() -> None:
    b = _bundle([50, 60, 70])
    assert make_split(b, labels_per_class=5, seed=1) == make_split(b, labels_per_class=5, seed=1)
    assert make_split(b, labels_per_class=5, seed=1).checksum() == make_split(b, labels_per_class=5, seed=1).checksum()
    other = make_split(b, labels_per_class=5, seed=2)
    assert not np.array_equal(other.labeled, make_split(b, labels_per_class=5, seed=1).labeled)
    assert other.seed == 2


def test_num_labels_spread_evenly_with_random_remainder() -> None:
    b = _bundle([40] * 10)
    seen = set()
    for seed in range(6):
        counts = _counts(b, make_split(b, num_labels=25, seed=seed).labeled)
        assert sum(counts) == 25 and sorted(set(counts)) == [2, 3] and counts.count(3) == 5
        seen.add(tuple(counts))
    assert len(seen) > 1  # the classes that get the remainder depend on the seed


def test_num_labels_fills_small_classes_then_spreads_the_rest() -> None:
    b = _bundle([3, 50, 50], given=True)
    s = make_split(b, num_labels=30, val_per_class=1)
    assert _counts(b, s.labeled) == [2, 14, 14]


def test_too_many_labels_per_class_message() -> None:
    b = _bundle([130, 200, 120])
    with pytest.raises(DataError) as e:
        make_split(b, labels_per_class=500, val_per_class=10)
    assert str(e.value) == (
        "asked for 500 labels per class but class 'c2' has only 110 labeled training examples after "
        "holding out 10 for validation; use --labels-per-class <= 110"
    )


def test_num_labels_errors() -> None:
    b = _bundle([20, 20, 20])
    with pytest.raises(DataError, match="use --num-labels <= 54"):
        make_split(b, num_labels=100)
    with pytest.raises(DataError, match="use --num-labels >= 3"):
        make_split(b, num_labels=2)
    with pytest.raises(ConfigError, match="not both"):
        make_split(b, num_labels=6, labels_per_class=2)


def test_class_without_labeled_example_message() -> None:
    b = dataclasses.replace(_bundle([5, 5, 5, 0], unlabeled=3, given=True), classes=["a", "b", "c", "sandal"])
    with pytest.raises(DataError) as e:
        make_split(b)
    assert str(e.value) == (
        "class 'sandal' (3) has no labeled example: add at least one labeled example or remove the class"
    )


def test_user_split_default_val_and_unlabeled_pool() -> None:
    b = _bundle([20, 31], unlabeled=15, given=True)
    s = make_split(b, seed=0)
    assert _counts(b, s.val) == [2, 3]  # max(1, n_c // 10) per class
    assert _counts(b, s.labeled) == [18, 28]
    y = b.y_train.numpy()
    assert np.array_equal(s.unlabeled, np.setdiff1d(np.arange(len(y)), s.val))
    only_unlabeled = make_split(b, seed=0, unlabeled_includes_labeled=False)
    assert np.array_equal(only_unlabeled.unlabeled, np.flatnonzero(y == -1))
    sub = make_split(b, labels_per_class=4, seed=0, unlabeled_includes_labeled=False)
    # Candidates not drawn as labeled lose their labels and join the pool.
    assert _counts(b, sub.labeled) == [4, 4] and len(sub.unlabeled) == 15 + 18 + 28 - 8


def test_user_split_too_small_for_validation_warns_and_uses_none() -> None:
    b = _bundle([2, 30], unlabeled=4, given=True)
    with pytest.warns(UserWarning, match="val/ folder"):
        s = make_split(b)
    assert s.val.size == 0 and _counts(b, s.labeled) == [2, 30]


def test_explicit_val_set_means_no_carved_validation() -> None:
    b = _bundle([10, 10], unlabeled=5, given=True, with_val=True)
    s = make_split(b)
    assert s.val.size == 0 and len(s.labeled) == 20
    with pytest.warns(UserWarning, match="ignored"):
        make_split(b, val_per_class=2)


def test_empty_unlabeled_pool_message() -> None:
    b = _bundle([5, 5], given=True)
    for includes in (False, True):  # a pool holding only the labeled examples counts as empty
        s = make_split(b, val_per_class=0, unlabeled_includes_labeled=includes)
        with pytest.raises(DataError) as e:
            check_unlabeled(s, algorithm_needs_unlabeled=True)
        assert str(e.value).startswith("the unlabeled pool is empty (it holds only the labeled examples)")
        assert "--algorithm supervised" in str(e.value)
        check_unlabeled(s, algorithm_needs_unlabeled=False)


def test_val_per_class_too_large_message() -> None:
    with pytest.raises(DataError, match=r"use --val-per-class <= 7"):
        make_split(_bundle([8, 20]), val_per_class=8)


def test_checksum_json_round_trip_and_tamper_detection(tmp_path: Path) -> None:
    s = make_split(_bundle([30, 30]), labels_per_class=3, seed=5)
    assert Split.from_json(json.loads(json.dumps(s.to_json()))) == s
    path = tmp_path / "run" / "split.json"
    s.save(path)
    assert Split.load(path) == s
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left behind
    d = json.loads(path.read_text())
    d["labeled"][0] = d["unlabeled"][-1]
    path.write_text(json.dumps(d))
    with pytest.raises(DataError, match="checksum"):
        Split.load(path)
    d = s.to_json()
    d["seed"] = 6
    with pytest.raises(DataError, match="checksum"):
        Split.from_json(d)
    path.write_text("{not json")
    with pytest.raises(DataError, match="cannot read split file"):
        Split.load(path)


def test_split_remembers_the_data_it_was_drawn_from(tmp_path: Path) -> None:
    b = _bundle([20, 20], unlabeled=10)
    s = make_split(b, labels_per_class=3, seed=1)
    path = tmp_path / "split.json"
    s.save(path)
    back = Split.load(path)
    assert back.data == s.data and back.data["rows"] == 50 and back.data["classes"] == ["c0", "c1"]
    back.check_fits(b)
    y = b.y_train.clone()
    y[[0, 1]] = y[[1, 0]] if y[0] != y[1] else torch.tensor([1 - y[0], y[1]])
    changes = {
        "labels": dataclasses.replace(b, y_train=y),
        "classes": dataclasses.replace(b, classes=["c0", "renamed"]),
        "images or features": dataclasses.replace(b, x_train=b.x_train + 1),
        "training rows then": _bundle([20, 20], unlabeled=11),
        "validation or test set changed": dataclasses.replace(b, x_test=torch.zeros(3, 2), y_test=torch.arange(3) % 2),
    }
    for needle, other in changes.items():
        with pytest.raises(DataError, match=f"not the data this run's split was drawn from.*{needle}"):
            back.check_fits(other)
    d = json.loads(path.read_text())
    d["data"]["rows"] = 51  # the fingerprint is under the checksum
    with pytest.raises(DataError, match="checksum"):
        Split.from_json(d)
    legacy = {k: v for k, v in s.to_json().items() if k not in ("data", "checksum")}
    legacy["checksum"] = Split(**{k: legacy[k] for k in ("labeled", "unlabeled", "val", "seed")}).checksum()
    assert Split.from_json(legacy).data is None  # a split saved before fingerprints still loads
    older = {**s.data}
    del older["heldout_sha256"]  # a split saved before the held-out digest existed is not judged on it
    dataclasses.replace(s, data=older).check_fits(dataclasses.replace(b, x_test=torch.zeros(3, 2), y_test=y[:3]))


def test_checksum_depends_on_which_array_holds_an_index() -> None:
    a = Split(labeled=[1, 2], unlabeled=[3], val=[], seed=0)
    b = Split(labeled=[1], unlabeled=[2, 3], val=[], seed=0)
    assert a.checksum() != b.checksum()


def test_split_is_frozen_and_checks_fit() -> None:
    b = _bundle([10, 10])
    s = make_split(b, labels_per_class=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        s.labeled[0] = 0
    s.check_fits(b)
    with pytest.raises(DataError, match="not the data this run's split was drawn from"):
        s.check_fits(_bundle([3, 3]))
    legacy = Split(labeled=s.labeled, unlabeled=s.unlabeled, val=s.val, seed=s.seed)  # saved without a fingerprint
    with pytest.raises(DataError, match="other data"):
        legacy.check_fits(_bundle([3, 3]))
    with pytest.raises(DataError, match="overlap"):
        Split(labeled=[1], unlabeled=[2], val=[2], seed=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.integers(min_value=1, max_value=40), min_size=2, max_size=6),
    unlabeled=st.integers(min_value=0, max_value=20),
    labels_per_class=st.integers(min_value=1, max_value=12),
    val_per_class=st.one_of(st.none(), st.integers(min_value=0, max_value=5)),
    given_labels=st.booleans(),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_split_property_counts_disjointness_or_documented_error(
    counts: list[int],
    unlabeled: int,
    labels_per_class: int,
    val_per_class: int | None,
    given_labels: bool,
    seed: int,
) -> None:
    b = _bundle(counts, unlabeled=unlabeled, given=given_labels)
    sizes = np.array(counts)
    # The documented rules, by hand: which request is infeasible, and with which message.
    if val_per_class is not None:
        held = np.full(len(counts), val_per_class)
        error = "use --val-per-class <=" if sizes.min() <= val_per_class else None
    elif not given_labels:  # built-in sets: max(1, min(500, smallest class // 10)) per class
        held = np.full(len(counts), max(1, min(500, int(sizes.min()) // 10)))
        error = "too few to hold one out" if sizes.min() <= held[0] else None
    else:  # user labels: a tenth of each class, or no validation when a class would keep fewer than 2
        held = np.maximum(1, sizes // 10)
        held = held if (sizes - held >= 2).all() else np.zeros_like(held)
        error = None
    if error is None and (sizes - held < labels_per_class).any():
        error = "use --labels-per-class <="
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if error is not None:
            with pytest.raises(DataError, match=re.escape(error)):
                make_split(b, labels_per_class=labels_per_class, val_per_class=val_per_class, seed=seed)
            return
        s = make_split(b, labels_per_class=labels_per_class, val_per_class=val_per_class, seed=seed)
    assert _counts(b, s.val) == held.tolist()
    y = b.y_train.numpy()
    val_counts = np.array(_counts(b, s.val))
    assert (y[s.labeled] >= 0).all() and (y[s.val] >= 0).all()
    assert _counts(b, s.labeled) == [labels_per_class] * len(counts)
    assert (val_counts + labels_per_class <= sizes).all()
    if val_per_class is not None:
        assert val_counts.tolist() in ([val_per_class] * len(counts), [0] * len(counts))
    assert np.intersect1d(s.val, s.labeled).size == 0 and np.intersect1d(s.val, s.unlabeled).size == 0
    assert np.array_equal(s.unlabeled, np.setdiff1d(np.arange(len(y)), s.val))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = make_split(b, labels_per_class=labels_per_class, val_per_class=val_per_class, seed=seed)
    assert s == again
    assert Split.from_json(s.to_json()) == s


def test_npz_that_is_not_an_archive(tmp_path: Path) -> None:
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(DataError, match="single array"):
        load_dataset(str(tmp_path / "single.npz"))
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(str(tmp_path / "junk.npz"))


def test_split_rejects_repeated_indices() -> None:
    with pytest.raises(DataError, match="repeated"):
        Split(labeled=[1, 1], unlabeled=[2], val=[], seed=0)


def test_keep_classes_reads_numbers_as_names_first() -> None:
    b = dataclasses.replace(_bundle([5, 5, 5]), classes=["1", "2", "10"])  # folder names that look like numbers
    kept = b.keep_classes([1, 10])  # as YAML reads `classes: [1, 10]`
    assert kept.classes == ["1", "10"] and sorted(set(kept.y_train.tolist())) == [0, 1]
    assert kept.keep_classes(["10", "1"]).classes == ["10", "1"]
    assert _bundle([5, 5, 5]).keep_classes([2, 0]).classes == ["c2", "c0"]  # no such names: indices
    with pytest.raises(ConfigError, match="outside 0..2"):
        _bundle([5, 5, 5]).keep_classes([0, 3])


def test_wide_and_float_grayscale_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    from fewlabels.data.formats import ImageReader

    reader = ImageReader(strict=True, image_size=None)
    ramp16 = np.array([[0, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(ramp16).save(tmp_path / "wide.png")  # a 16-bit PNG
    assert reader.read(tmp_path / "wide.png").tolist() == [[0, 128, 255]]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(tmp_path / "unit.tif")
    assert reader.read(tmp_path / "unit.tif").tolist() == [[0, 128, 255]]  # [0, 1] floats: scaled
    Image.fromarray(np.array([[-5.0, 100.0, 300.0]], dtype=np.float32), mode="F").save(tmp_path / "wide.tif")
    assert reader.read(tmp_path / "wide.tif").tolist() == [[0, 100, 255]]  # wider floats: 0..255, clipped
