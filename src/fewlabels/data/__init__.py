"""Data: built-in datasets, user data formats, and labeled/unlabeled/validation splits."""

from fewlabels.data.bundle import DataBundle
from fewlabels.data.formats import load_csv_manifest, load_image_folder, load_npz
from fewlabels.data.sources import DATASETS, default_data_root, load_data, load_dataset
from fewlabels.data.split import Split, check_unlabeled, make_split

__all__ = [
    "DATASETS",
    "DataBundle",
    "Split",
    "check_unlabeled",
    "default_data_root",
    "load_csv_manifest",
    "load_data",
    "load_dataset",
    "load_image_folder",
    "load_npz",
    "make_split",
]
