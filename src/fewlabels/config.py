"""Frozen, documented configuration: one dataclass per section, resolved from defaults, YAML and flags."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from fewlabels.errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class DataConfig:
    """Which data to train on and how to split it."""

    dataset: str = "digits"
    """A built-in dataset name (see `fewlabels datasets`), an image folder, a .csv manifest or a .npz file."""
    data_root: str | None = None
    """Folder holding a built-in dataset's files (torchvision layout); None uses each dataset's default."""
    download: bool = False
    """Allow torchvision to download a missing built-in dataset."""
    labels_per_class: int | None = None
    """Labeled examples drawn per class (stratified, from the seed); None with num_labels None keeps all labels."""
    num_labels: int | None = None
    """Total labeled examples, spread evenly across classes; an alternative to labels_per_class."""
    val_per_class: int | None = None
    """Labeled validation examples held out per class; None picks a dataset-sized default."""
    image_size: int | None = None
    """Resize user images to this square size (needed when their sizes differ)."""
    strict: bool = False
    """Fail on an unreadable image instead of skipping it with a warning."""
    augment: bool = True
    """Apply the algorithm's augmented views; False feeds un-augmented inputs to every view (ablations, tests)."""
    classes: list[str] | None = None
    """Keep only these classes (names or indices), relabeled in this order, e.g. [sandal, sneaker] for a binary
    task cut from a built-in dataset; None keeps every class."""


@dataclass(frozen=True)
class ModelConfig:
    """The network."""

    name: str | None = None
    """A registered model (see `fewlabels models`); None uses the dataset's default."""
    dropout: float = 0.0
    """Dropout probability before the classifier."""
    neck: int = 0
    """Linear-BatchNorm-ReLU layers between the backbone and the classifier (SimCLR's projection-head layers)."""
    init_from: str | None = None
    """A run folder whose final model initialises this one: every weight whose name and shape match, except the
    classifier, which a new task always trains fresh (fine-tuning after pretraining)."""
    pretrained: bool = False
    """Load pretrained weights where the model has them (downloads; torchvision models only)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Options of the model's factory, e.g. {norm: layer} for mlp, {stem: cifar} for resnet18, or {drop_path: 0.2}
    (stochastic depth) for wrn28_2, wrn28_8 and resnet18."""


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule (FixMatch's defaults)."""

    optimizer: str = "sgd"
    """'sgd' (Nesterov momentum) or 'adamw'."""
    lr: float = 0.03
    """Peak learning rate."""
    momentum: float = 0.9
    """SGD momentum (AdamW beta1)."""
    nesterov: bool = True
    """Use Nesterov momentum with SGD."""
    weight_decay: float = 5e-4
    """Weight decay, applied to weights only: never to BatchNorm parameters or biases."""
    schedule: str = "cosine"
    """'cosine' (FixMatch's lr*cos(7*pi*k/(16*K))) or 'constant'."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps."""
    grad_clip: float | None = None
    """Clip the gradient norm to this value; None disables clipping."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"optim.lr must be positive, got {self.lr}")
        _check(self.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.grad_clip is None or self.grad_clip > 0, f"optim.grad_clip must be positive, got {self.grad_clip}")


@dataclass(frozen=True)
class AlgorithmConfig:
    """The semi-supervised algorithm and its own options (see `fewlabels algorithms`)."""

    name: str = "fixmatch"
    """A registered algorithm name."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Options passed to the algorithm (threshold, lambda_u, ...); unknown ones are an error."""


AMP_DTYPES = ("auto", "bf16", "fp16")
"""The autocast precisions train.amp_dtype accepts."""


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    steps: int | None = 2000
    """Optimizer steps; ignored when budget is set."""
    budget: str | None = None
    """Wall-clock budget such as '15m', '90s' or '1h'; fixes the step count so the schedule ends on time."""
    batch_size: int = 64
    """Global labeled batch size B (split evenly across DDP ranks)."""
    unlabeled_ratio: int = 7
    """mu: the unlabeled batch is unlabeled_ratio * batch_size."""
    ema: float = 0.999
    """Decay of the evaluation EMA model (warmed up as min(ema, (1 + step) / (10 + step)))."""
    eval_every: int = 200
    """Evaluate the EMA model on validation and test every this many steps."""
    eval_last_k: int = 5
    """Report the median test accuracy of the last this many evaluations."""
    log_every: int = 50
    """Write averaged training statistics every this many steps."""
    checkpoint_every: int = 500
    """Write a resumable checkpoint every this many steps (and at the end)."""
    seed: int = 0
    """Fixes the label split, the data order, the augmentation and the initialisation."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu', 'cuda' or 'cuda:N'."""
    amp: bool = True
    """Autocast on GPU (see amp_dtype); ignored on CPU."""
    amp_dtype: str = "auto"
    """'auto' (bf16 where the GPU runs it natively, else fp16), 'bf16', or 'fp16' (with a grad scaler)."""
    channels_last: bool = True
    """Use channels_last memory format for image models."""
    compile: bool = False
    """Compile the model with torch.compile."""
    eval_batch_size: int = 1024
    """Batch size for evaluation and prediction."""
    progress: bool = True
    """Show a progress bar."""
    tensorboard: bool = False
    """Also write TensorBoard logs (needs the tensorboard package)."""

    def __post_init__(self) -> None:
        for name in (
            "batch_size",
            "unlabeled_ratio",
            "eval_every",
            "eval_last_k",
            "log_every",
            "checkpoint_every",
            "eval_batch_size",
        ):
            _check(getattr(self, name) >= 1, f"train.{name} must be at least 1, got {getattr(self, name)}")
        _check(self.steps is None or self.steps >= 1, f"train.steps must be at least 1, got {self.steps}")
        _check(0 <= self.seed < 2**32, f"train.seed must be an integer in [0, 2**32), got {self.seed}")
        _check(
            self.amp_dtype in AMP_DTYPES,
            f"train.amp_dtype must be one of {', '.join(AMP_DTYPES)}, got {self.amp_dtype!r}",
        )
        _check(0.0 <= self.ema < 1.0, f"train.ema must be in [0, 1), got {self.ema}; 0.999 is the usual value")


@dataclass(frozen=True)
class Config:
    """A whole run's configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    """Data section."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model section."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer section."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Algorithm section."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training-loop section."""
    out: str | None = None
    """Run folder; None derives one under runs/ from the dataset, algorithm and seed."""

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict; algorithm options are flattened into the algorithm section."""
        d = dataclasses.asdict(self)
        algo = d.pop("algorithm")
        d["algorithm"] = {"name": algo["name"], **dict(algo["options"])}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Config:
        """Build a Config from a nested dict, rejecting unknown keys with close-match suggestions."""
        return _apply(cls(), d)

    def override(self, **dotted: Any) -> Config:
        """A copy with dotted keys replaced, e.g. override(**{'train.steps': 10})."""
        return _apply(self, _undot(dotted))

    def run_hash(self) -> str:
        """A hash of everything that changes the trained model or its reported figures: not the out folder, the
        progress bar, logging and checkpoint intervals, or where the data is read from (split.json's fingerprint
        checks that the data itself is the same)."""
        text = json.dumps(model_settings(self.to_dict()), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The resolved config as YAML."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def model_settings(d: Mapping[str, Any]) -> dict[str, Any]:
    """A config dict (`Config.to_dict()`) less what does not change the trained model or its reported figures: the
    out folder, the progress bar, logging and checkpoint intervals, the device, where the data is read from."""
    d = copy.deepcopy(dict(d))
    d.pop("out", None)
    for key in ("progress", "tensorboard", "device", "eval_batch_size", "log_every", "checkpoint_every"):
        d.get("train", {}).pop(key, None)
    for key in ("download", "data_root"):
        d.get("data", {}).pop(key, None)
    return d


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}


def _undot(flat: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    hint = did_you_mean(key, valid)
    return ConfigError(f"unknown config key {key!r} in {where}: {hint}valid keys: {', '.join(valid)}")


def _apply(base: Config, d: Mapping[str, Any]) -> Config:
    if not isinstance(d, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    top = [f.name for f in fields(Config)]
    changes: dict[str, Any] = {}
    for key, value in d.items():
        if key == "out":
            changes["out"] = None if value is None else str(value)
        elif key == "algorithm":
            changes["algorithm"] = _apply_algorithm(base.algorithm, value)
        elif key in SECTIONS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"config section {key!r} must be a mapping, got {value!r}")
            changes[key] = _apply_section(getattr(base, key), value, key)
        else:
            raise _unknown(key, top, "the top level")
    return dataclasses.replace(base, **changes)


def _apply_algorithm(base: AlgorithmConfig, value: Any) -> AlgorithmConfig:
    if isinstance(value, str):
        return AlgorithmConfig(name=value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"config section 'algorithm' must be a name or a mapping, got {value!r}")
    value = dict(value)
    name = value.pop("name", base.name)
    options = dict(value.pop("options", {}) or {})
    options.update(value)
    # Options of another algorithm do not carry over when the name changes.
    merged = {**base.options, **options} if name == base.name else options
    return AlgorithmConfig(name=str(name), options=merged)


def _apply_section(section: Any, values: Mapping[str, Any], where: str) -> Any:
    valid = {f.name: f for f in fields(section)}
    changes = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in valid:
            raise _unknown(key, list(valid), f"section {where!r}")
        changes[key] = _coerce(value, valid[key].type, f"{where}.{key}")
    return dataclasses.replace(section, **changes)


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    text = str(annotation)
    if value is None:
        if "None" not in text:
            raise ConfigError(f"{where} cannot be null")
        return None
    if text.startswith("list"):
        if isinstance(value, str):  # --set data.classes=sandal,sneaker
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return list(value)
    for typ in ("bool", "int", "float", "str"):
        if re.match(rf"^{typ}\b", text):
            return _convert(value, typ, where)
    return value


def _convert(value: Any, typ: str, where: str) -> Any:
    try:
        if typ == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if typ == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if typ == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a {typ}, got {value!r}") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does: `1e-3` and `5e-1` are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text with the safe loader; a syntax error becomes a ConfigError naming `where` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where} is not valid YAML{at}: {problem}: fix the YAML there") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (safe loader) into a nested dict."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist: check the path given to --config")
    data = parse_yaml(path.read_text(), f"config file {str(path)!r}") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections (data:, train:, ...)")
    return data


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parse 'section.key=value' with a YAML scalar value, as given to --set."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}: e.g. --set algorithm.threshold=0.9")
    key, raw = text.split("=", 1)
    return key.strip(), parse_yaml(raw, f"the value of --set {text!r}") if raw.strip() else None


def resolve_config(config: Config | Mapping[str, Any] | str | Path | None = None, **dotted: Any) -> Config:
    """Turn a Config, a nested dict or a YAML path (plus dotted overrides) into a Config."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = config
    elif isinstance(config, str | Path):
        cfg = Config.from_dict(load_yaml(config))
    else:
        cfg = Config.from_dict(config)
    return cfg.override(**dotted) if dotted else cfg


def parse_duration(text: str) -> float:
    """'15m' -> 900.0 seconds; accepts s, m, h suffixes or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if not match:
        raise ConfigError(f"cannot read the budget {text!r}: use a number with s, m or h, e.g. 15m or 90s")
    value, unit = float(match.group(1)), match.group(2) or "s"
    seconds = value * {"s": 1, "m": 60, "h": 3600}[unit]
    if seconds <= 0:
        raise ConfigError(f"the budget {text!r} must be positive")
    return seconds
