"""fewlabels: train accurate models from a few labels plus plenty of unlabeled data."""

from fewlabels.algorithms import list_algorithms
from fewlabels.api import evaluate, predict
from fewlabels.config import Config, resolve_config
from fewlabels.data import DATASETS, load_dataset
from fewlabels.engine.run import Run
from fewlabels.engine.trainer import train
from fewlabels.errors import ConfigError, DataError, FewLabelsError, TrainingDiverged
from fewlabels.estimator import SemiSupervisedClassifier, SemiSupervisedKFold
from fewlabels.models import list_models

__version__ = "0.1.0"


def list_datasets() -> list[str]:
    """Names of the built-in datasets."""
    return DATASETS.names()


__all__ = [
    "Config",
    "ConfigError",
    "DataError",
    "FewLabelsError",
    "Run",
    "SemiSupervisedClassifier",
    "SemiSupervisedKFold",
    "TrainingDiverged",
    "evaluate",
    "list_algorithms",
    "list_datasets",
    "list_models",
    "load_dataset",
    "predict",
    "resolve_config",
    "train",
]
