"""A finished (or running) run folder: its config, split, metrics, summary and saved models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import Tensor, nn

from fewlabels.config import Config, resolve_config
from fewlabels.errors import ConfigError
from fewlabels.io import atomic_write_bytes, atomic_write_text


def save_model(folder: Path, model: nn.Module, bundle: Any, cfg: Config, name: str = "model", **extra: Any) -> None:
    """Write `name`.safetensors (weights) and `name`.json (how to rebuild the model, plus `extra`), atomically."""
    mean, std = bundle.channel_stats()
    meta = {
        "model": cfg.model.name or bundle.default_model,
        "num_classes": bundle.num_classes,
        "input_shape": list(bundle.input_shape),
        "mean": mean,
        "std": std,
        "dropout": cfg.model.dropout,
        "neck": cfg.model.neck,
        "options": dict(getattr(model, "options", {})),
        "classes": list(bundle.classes),
        "modality": bundle.modality,
        **extra,
    }
    # Auxiliary training heads (heads.*) are not part of the deployed classifier.
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not k.startswith("heads.")}
    atomic_write_bytes(folder / f"{name}.safetensors", save(weights))  # fsynced, then renamed
    atomic_write_text(folder / f"{name}.json", json.dumps(meta, indent=2))


def build_model(info: dict[str, Any]) -> nn.Module:
    """An untrained model as `save_model` described it (name, classes, input shape, normalisation, dropout, neck
    and factory options): what a run's model.json or an exported file's metadata rebuilds before loading weights."""
    from fewlabels.models import create_model

    return create_model(
        info["model"],
        num_classes=info["num_classes"],
        input_shape=tuple(info["input_shape"]),
        mean=info["mean"],
        std=info["std"],
        dropout=info.get("dropout", 0.0),
        neck=info.get("neck", 0),
        **info.get("options", {}),
    )


class Run:
    """Read access to a run folder written by `fewlabels.train`."""

    classic_model: Any = None
    """A classic baseline's fitted scikit-learn Pipeline, in memory only, on the Run that `train` returned after
    fitting it; None otherwise (a classic run keeps no model file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.yaml").exists():
            raise ConfigError(f"{self.path} is not a fewlabels run folder (no config.yaml): pass the --out of a run")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def config(self) -> Config:
        """The resolved config the run was made with."""
        return resolve_config(self.path / "config.yaml")

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json (final figures); empty while the run has not finished."""
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def metrics(self) -> list[dict[str, Any]]:
        """Every row of metrics.jsonl (training rows and evaluation rows, the latter with kind='eval'); a last line
        cut off by a killed run is skipped."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    @property
    def classes(self) -> list[str]:
        """Class names, index k -> name."""
        return self.model_info()["classes"]

    def model_info(self, which: str = "model") -> dict[str, Any]:
        """What `save_model` recorded about the model; a classic baseline's run keeps none (a ConfigError)."""
        if which not in ("model", "best"):
            raise ConfigError(
                f"which must be 'model' (the final EMA model) or 'best' (the best on validation), got {which!r}"
            )
        path = self.path / f"{which}.json"
        if not path.exists():
            self._refuse_classic()
            if which == "best" and self.summary:
                raise ConfigError(
                    f"{self.path} had no validation set, so no best model was kept: use --which model, "
                    "or train with --val-per-class N"
                )
            raise ConfigError(f"{self.path} has no {which}.safetensors yet: the run has not finished")
        return json.loads(path.read_text())

    def _refuse_classic(self) -> None:
        from fewlabels.algorithms.classic import is_classic

        name = self.config.algorithm.name
        if is_classic(name):
            raise ConfigError(
                f"{self.path} is a run of the classic baseline {name!r}: classic baselines keep no model (the "
                "scikit-learn fit is never pickled), so there is nothing to load, evaluate or predict with; for "
                "predictions fit the Python estimator, "
                f"fewlabels.estimator.SemiSupervisedClassifier(algorithm={name!r})"
            )

    def load_model(self, which: str = "model") -> nn.Module:
        """The final EMA model ('model') or the best-on-validation one ('best'), in eval mode, on the CPU."""
        model = build_model(self.model_info(which))
        model.load_state_dict(load_file(str(self.path / f"{which}.safetensors")))
        return model.eval()

    def predict_proba(self, x: Tensor | np.ndarray, which: str = "model", batch_size: int = 1024) -> np.ndarray:
        """Class probabilities for inputs in the training format (uint8 or [0, 1] images, or vectors)."""
        from fewlabels.engine.evaluate import predict_logits

        x = torch.as_tensor(np.asarray(x)) if not isinstance(x, Tensor) else x
        logits = predict_logits(self.load_model(which), x, batch_size=batch_size)
        return logits.softmax(-1).numpy()

    def predict(self, x: Tensor | np.ndarray, which: str = "model") -> np.ndarray:
        """Predicted class indices."""
        return self.predict_proba(x, which).argmax(-1)
