"""Run folders as resumable stages: what the benchmark grid and the multi-stage pipelines build on."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from fewlabels.config import SECTIONS, Config, load_yaml, model_settings, resolve_config
from fewlabels.engine import checkpoint as ckpt
from fewlabels.engine.run import Run
from fewlabels.engine.setup import config_diff
from fewlabels.errors import CheckpointError, ConfigError
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
    except (OSError, CheckpointError):  # a broken checkpoint.json (load errors arrive as CheckpointError)
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
    from fewlabels.engine.trainer import absolute_paths, train

    folder = Path(folder)
    cfg = absolute_paths(config.override(out=str(folder)))  # as train() saves it, so the two compare
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
        # As a resumed run: the progress bar, logging, device or data folder may change, the model's settings not.
        now = model_settings(json.loads(json.dumps(settings["config"], default=str)))  # as pipeline.json holds it
        before = model_settings(old.get("config") or {})
        if before != now:
            diff.append(f"the training config: {config_diff(before, now) or 'changed'}")
        if diff:
            raise ConfigError(
                f"{out} holds a {kind} pipeline with other settings ({'; '.join(diff)}): use the same settings to "
                "resume it, or another --out"
            )
        return
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no pipeline.json: choose a new or empty folder")
    atomic_write_text(path, json.dumps(settings, indent=2, default=str))


# Keys that make one setting: a value for either keeps a fallback for both away (the split takes only one of them).
LABEL_KEYS = ("data.labels_per_class", "data.num_labels")


def _key(text: Any) -> str:
    return str(text).replace("-", "_")


def _dotted_keys(d: Mapping[str, Any]) -> set[str]:
    keys: set[str] = set()
    for key, value in d.items():
        key = _key(key)
        if "." in key:
            section, _, name = key.partition(".")
            keys.add(f"{section}.{_key(name)}")
        elif key == "algorithm" and not isinstance(value, Mapping):
            keys.add("algorithm.name")
        elif (key in SECTIONS or key == "algorithm") and isinstance(value, Mapping):
            keys |= {f"{key}.{_key(k)}" for k in value}
        else:
            keys.add(key)
    return keys


def given_keys(
    config: str | Path | Mapping[str, Any] | Config | None, overrides: Mapping[str, Any] | None = None
) -> set[str]:
    """The dotted keys (e.g. 'data.labels_per_class') that a pipeline's `config` and `overrides` set.

    A YAML file or a mapping sets the keys it holds (even to a default value); a `Config` object sets the values
    that differ from `Config()`'s defaults; None sets nothing.
    """
    keys = _dotted_keys(overrides or {})
    if config is None:
        return keys
    if isinstance(config, Config):
        default, given = Config().to_dict(), config.to_dict()
        for section, values in given.items():
            if isinstance(values, dict):
                keys |= {f"{section}.{k}" for k, v in values.items() if default[section].get(k, object()) != v}
            elif default.get(section) != values:
                keys.add(section)
        return keys
    return keys | _dotted_keys(load_yaml(config) if isinstance(config, str | Path) else config)


def pipeline_config(
    config: str | Path | Mapping[str, Any] | Config | None,
    overrides: Mapping[str, Any] | None,
    *,
    arguments: Mapping[str, Any],
    fallbacks: Mapping[str, Any],
) -> Config:
    """A pipeline's base config, resolved as `fewlabels train` resolves --config and its flags.

    `config` plus dotted `overrides` first; then `arguments`, the pipeline function's own arguments as dotted keys
    (None: not given), which win; `fallbacks` (the pipeline's defaults, or what it inherits, such as a teacher's
    data) fill only the keys that none of them sets (`given_keys`). data.labels_per_class and data.num_labels count
    as one setting: giving either one keeps both fallbacks away, and one given by an argument or in `overrides`
    replaces the other one of a weaker source.
    """
    overrides = dict(overrides or {})
    if any(k in _dotted_keys(overrides) for k in LABEL_KEYS):  # a flag for one replaces the file's other one
        overrides = {**{k: None for k in LABEL_KEYS if k not in _dotted_keys(overrides)}, **overrides}
    base = resolve_config(config, **overrides)
    given = given_keys(config, overrides)
    chosen = {k: v for k, v in arguments.items() if v is not None}
    if any(k in chosen for k in LABEL_KEYS):
        chosen = {**{k: None for k in LABEL_KEYS}, **chosen}
    taken = given | set(chosen)
    if taken & set(LABEL_KEYS):
        taken |= set(LABEL_KEYS)
    changes = {k: v for k, v in fallbacks.items() if k not in taken}
    return base.override(**changes, **chosen)


def check_algorithm_options(base: Config, stages: Mapping[str, Collection[str]], kind: str) -> None:
    """Refuse, before anything trains, a user algorithm option (`base.algorithm.options`, from --set algorithm.X or
    a config file) that no stage of the `kind` pipeline would use.

    `stages` maps each stage algorithm to the options the pipeline sets itself (they win over the user's, see
    `stage_algorithm`). An option is used when some stage algorithm accepts it (`algorithm_options`) and does not
    fix it; the error names the option and the stage algorithms.
    """
    from fewlabels.algorithms import algorithm_options

    for option in base.algorithm.options:
        accepting = [name for name in stages if option in algorithm_options(name)]
        if not accepting:
            listed = "; ".join(f"{n}: {', '.join(algorithm_options(n)) or 'none'}" for n in stages)
            raise ConfigError(
                f"algorithm option {option!r} is not an option of any {kind} stage algorithm "
                f"({', '.join(stages)}): their options are {listed}"
            )
        if all(option in stages[name] for name in accepting):
            raise ConfigError(
                f"algorithm option {option!r} is set by the {kind} pipeline itself (stage algorithm "
                f"{', '.join(accepting)}): use the pipeline's own argument or flag for it"
            )


def stage_algorithm(
    base: Config,
    name: str,
    fixed: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Dotted overrides that run algorithm `name` in a pipeline stage.

    Its options are the pipeline's `defaults`, then the user's algorithm options that `name` accepts (from
    `base.algorithm.options`; the others belong to other stages, see `check_algorithm_options`), then the
    pipeline's `fixed` options, which win.
    """
    from fewlabels.algorithms import algorithm_options

    accepted = algorithm_options(name)
    user = {k: v for k, v in base.algorithm.options.items() if k in accepted}
    return {"algorithm.name": name, "algorithm.options": {**dict(defaults or {}), **user, **dict(fixed or {})}}


def data_settings(cfg: Config) -> dict[str, Any]:
    """A config's whole `data` section as dotted keys ('data.dataset', ...), e.g. to inherit a teacher's data."""
    return {f"data.{k}": v for k, v in dataclasses.asdict(cfg.data).items()}


def pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals for pipeline reports; '-' when missing."""
    return "-" if value is None else f"{100 * value:.2f}"
