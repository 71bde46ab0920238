"""Run folders as resumable stages: what the benchmark grid and the multi-stage pipelines build on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from fewlabels.config import Config, resolve_config
from fewlabels.engine import checkpoint as ckpt
from fewlabels.engine.run import Run
from fewlabels.engine.setup import config_diff
from fewlabels.errors import ConfigError
from fewlabels.io import atomic_write_text


def read_summary(folder: str | Path) -> dict[str, Any] | None:
    """The run's summary.json, or None while it has not finished (or the file is unreadable)."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return summary if isinstance(summary, dict) else None


def resumable(folder: str | Path) -> bool:
    """True if the folder holds a config and a complete checkpoint to continue from."""
    folder = Path(folder)
    try:
        return (folder / "config.yaml").is_file() and ckpt.has_checkpoint(folder)
    except (OSError, ValueError, KeyError, TypeError):  # a broken checkpoint.json
        return False


def _check_same_config(folder: Path, cfg: Config) -> None:
    saved = resolve_config(folder / "config.yaml")
    if saved.run_hash() != cfg.run_hash():
        diff = config_diff(saved.to_dict(), cfg.to_dict())
        raise ConfigError(
            f"{folder} holds a run made with a different config ({diff}): use the same settings or another folder"
        )


def run_stage(config: Config, folder: str | Path) -> Run:
    """Train `config` into `folder` exactly once.

    A finished run with the same config is returned as it is; an interrupted one resumes from its last checkpoint;
    an empty folder or one holding an unfinished run without a usable checkpoint starts afresh (same seed, so the
    same run). A finished or resumable run made with a different config is refused, naming the difference.
    """
    from fewlabels.engine.trainer import train

    folder = Path(folder)
    cfg = config.override(out=str(folder))
    if read_summary(folder) is not None and (folder / "config.yaml").is_file():
        _check_same_config(folder, cfg)
        return Run(folder)
    if resumable(folder):
        return train(cfg, resume=True)  # refuses a different config itself
    if folder.exists():
        if any(folder.iterdir()) and not (folder / "config.yaml").is_file():
            raise ConfigError(f"{folder} is not empty and is not a run folder: choose another folder")
        shutil.rmtree(folder)
    return train(cfg)


def check_pipeline_settings(out: Path, settings: dict[str, Any], kind: str) -> None:
    """Write OUT/pipeline.json for a new pipeline, or refuse to continue one made with other settings (the
    difference named); a non-empty folder without pipeline.json is refused too. `kind` names the pipeline."""
    path = out / "pipeline.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if k != "config" and old.get(k) != v]
        if old.get("config") != settings["config"]:
            diff.append("the training config")
        if diff:
            raise ConfigError(
                f"{out} holds a {kind} pipeline with other settings ({'; '.join(diff)}): use the same settings to "
                "resume it, or another --out"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no pipeline.json: choose a new or empty folder")
    atomic_write_text(path, json.dumps(settings, indent=2, default=str))


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals for pipeline reports; '-' when missing."""
    return "-" if value is None else f"{100 * value:.2f}"
