"""Building a run: the run folder, data and split, model, EMA, algorithm, optimizer, samplers; checkpoint state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from fewlabels.algorithms import ALGORITHMS, Algorithm, create_algorithm
from fewlabels.augment import Augmenter
from fewlabels.config import Config, resolve_config
from fewlabels.data import DataBundle, Split, check_unlabeled, load_data, make_split
from fewlabels.engine import checkpoint as ckpt
from fewlabels.engine.distributed import DistInfo, gather_objects, per_rank
from fewlabels.engine.ema import ModelEMA
from fewlabels.engine.sampler import InfiniteSampler
from fewlabels.engine.schedule import build_optimizer
from fewlabels.errors import ConfigError, DataError
from fewlabels.io import atomic_write_text
from fewlabels.models import MODELS, create_model


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is visible: use --device cpu")
    return device


def amp_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for train.amp_dtype on a CUDA device: 'auto' is bf16 where the GPU runs it natively
    (compute capability 8, Ampere, and later; older GPUs only emulate it, slowly) and fp16 elsewhere."""
    if name == "bf16":
        return torch.bfloat16
    if name == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16


def default_out(cfg: Config) -> str:
    """runs/<dataset>-<algorithm>-<labels>-s<seed>."""
    data = cfg.data
    labels = (
        f"{data.labels_per_class}pc" if data.labels_per_class else (f"{data.num_labels}l" if data.num_labels else "all")
    )
    stem = Path(data.dataset).stem if ("/" in data.dataset or "." in data.dataset) else data.dataset
    return str(Path("runs") / f"{stem}-{cfg.algorithm.name}-{labels}-s{cfg.train.seed}")


@dataclass
class Context:
    """Everything the loop needs, built once."""

    cfg: Config
    info: DistInfo
    device: torch.device
    folder: Path
    bundle: DataBundle
    split: Split
    model: nn.Module
    raw_model: nn.Module
    ema: ModelEMA
    algorithm: Algorithm
    optimizer: torch.optim.Optimizer
    augmenter: Augmenter
    labeled: InfiniteSampler
    unlabeled: InfiniteSampler | None
    x_train: Tensor
    y_train: Tensor
    autocast_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None


def prepare_folder(cfg: Config, folder: Path, resume: bool, info: DistInfo) -> None:
    """Check the run folder (a new run must not overwrite one; a resumed run must match its config), then write
    config.yaml."""
    config_path = folder / "config.yaml"
    if resume:
        if not ckpt.has_checkpoint(folder):
            raise ConfigError(f"--resume: {folder} holds no checkpoint to continue; drop --resume to start afresh")
        saved = resolve_config(config_path)
        if saved.run_hash() != cfg.run_hash():
            diff = config_diff(saved.to_dict(), cfg.to_dict())
            raise ConfigError(
                f"--resume: {folder} was made with a different config ({diff}); "
                "resume with the same settings or choose another --out"
            )
        return
    if ckpt.has_checkpoint(folder) or (folder / "summary.json").exists():
        raise ConfigError(f"{folder} already holds a run: add --resume to continue it or choose another --out")
    if info.is_main:
        folder.mkdir(parents=True, exist_ok=True)
        # What a run killed before its first checkpoint left behind would otherwise pass for this run's output.
        for stale in ("metrics.jsonl", "best.safetensors", "best.json", "model.safetensors", "model.json"):
            (folder / stale).unlink(missing_ok=True)
        atomic_write_text(config_path, cfg.to_yaml())


def config_diff(old: dict, new: dict, prefix: str = "") -> str:
    """'key: old -> new' for every setting that differs (display-only keys excluded)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_diff(a, b, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif a != b and key not in ("out", "progress", "tensorboard", "device", "eval_batch_size"):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(out)


def init_from_run(model: nn.Module, run_folder: str) -> list[str]:
    """Copy the weights of `run_folder`'s final model whose names and shapes match into `model`, except the
    classifier's; return the names copied. A run with nothing that fits is an error."""
    from safetensors.torch import load_file

    path = Path(run_folder) / "model.safetensors"
    if not path.exists():
        raise ConfigError(f"model.init_from: {path} does not exist; pass the folder of a finished run")
    source = load_file(str(path))
    own = model.state_dict()
    copied = [k for k, v in source.items() if k in own and own[k].shape == v.shape and not k.startswith("classifier.")]
    if not any(k.startswith("backbone.") for k in copied):
        raise ConfigError(
            f"model.init_from: no backbone weight of {run_folder} fits this model; use the same model (and input size)"
        )
    model.load_state_dict({**own, **{k: source[k] for k in copied}})
    return copied


def build_context(cfg: Config, info: DistInfo, resume: bool, bundle: DataBundle | None = None) -> Context:
    """Load the data (or take the in-memory `bundle`) and split, build model, EMA, algorithm, optimizer, augmenter
    and samplers."""
    ALGORITHMS.get(cfg.algorithm.name)  # unknown names fail before any data is read
    if cfg.model.name is not None:
        MODELS.get(cfg.model.name)
    device = resolve_device(cfg.train.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    folder = Path(cfg.out or default_out(cfg))
    prepare_folder(cfg, folder, resume, info)

    d = cfg.data
    if bundle is None:
        first = info.enabled and d.download  # rank 0 downloads alone, the others then read its files
        if first and not info.is_main:
            dist.barrier()
        bundle = load_data(d)
        if first and info.is_main:
            dist.barrier()
    split_path = folder / "split.json"
    if resume:
        if not split_path.exists():  # a new draw would not match the samplers' saved positions
            raise DataError(
                f"--resume: {split_path} is missing, and the checkpoint's sampler positions index that split: "
                "restore the file, or train into a new --out folder"
            )
        split = Split.load(split_path)
        split.check_fits(bundle)
    else:
        split = make_split(bundle, d.labels_per_class, d.num_labels, d.val_per_class, seed=cfg.train.seed)
        if info.is_main:
            split.save(split_path)

    probe = create_algorithm(cfg.algorithm.name, bundle.num_classes, len(split.unlabeled), **cfg.algorithm.options)
    check_unlabeled(split, type(probe).needs_unlabeled and not type(probe).labels_unused)

    torch.manual_seed(cfg.train.seed)  # the same initialisation on every rank
    mean, std = bundle.channel_stats()
    raw_model = create_model(
        cfg.model.name or bundle.default_model,
        num_classes=bundle.num_classes,
        input_shape=bundle.input_shape,
        mean=mean,
        std=std,
        dropout=cfg.model.dropout,
        neck=cfg.model.neck,
        pretrained=cfg.model.pretrained,
        **cfg.model.options,
    )
    if cfg.model.init_from:
        init_from_run(raw_model, cfg.model.init_from)
    probe.extend_model(raw_model)  # auxiliary heads (ReMixMatch's rotation head) before the optimizer sees them
    raw_model = raw_model.to(device)
    channels_last = cfg.train.channels_last and bundle.modality == "image"
    if channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    ema = ModelEMA(raw_model, cfg.train.ema)
    torch.manual_seed(cfg.train.seed * 1000 + 1 + info.rank)  # per-rank dropout and other model noise
    model: nn.Module = raw_model
    if cfg.train.compile:
        model = torch.compile(model)
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    autocast_dtype, scaler = None, None
    if cfg.train.amp and device.type == "cuda":
        autocast_dtype = amp_dtype(cfg.train.amp_dtype, device)
        if autocast_dtype == torch.float16:
            scaler = torch.amp.GradScaler("cuda")

    t = cfg.train
    per_rank(t.batch_size, info, "--batch-size")
    per_rank(t.batch_size * t.unlabeled_ratio, info, "the unlabeled batch (batch size x unlabeled ratio)")
    labeled = InfiniteSampler(torch.from_numpy(np.array(split.labeled)), t.batch_size, seed=t.seed + 1)
    unlabeled = None
    if type(probe).needs_unlabeled:
        pool = torch.as_tensor(np.array(probe.unlabeled_pool(list(split.unlabeled))), dtype=torch.long)
        if len(pool) == 0 or int(pool.min()) < 0 or int(pool.max()) >= len(bundle.x_train):
            raise ConfigError(
                f"algorithm {cfg.algorithm.name!r} asked for an unlabeled pool outside the training set "
                f"(rows 0..{len(bundle.x_train) - 1}) or an empty one: check its inputs"
            )
        unlabeled = InfiniteSampler(pool, t.batch_size * t.unlabeled_ratio, t.seed + 2)
    return Context(
        cfg=cfg,
        info=info,
        device=device,
        folder=folder,
        bundle=bundle,
        split=split,
        model=model,
        raw_model=raw_model,
        ema=ema,
        algorithm=probe,
        optimizer=build_optimizer(raw_model, cfg.optim),
        augmenter=Augmenter(
            bundle.modality,
            hflip=bundle.hflip,
            seed=t.seed * 1000 + info.rank,
            feature_stats=(torch.tensor(mean), torch.tensor(std)) if bundle.modality == "vector" else None,
        ),
        labeled=labeled,
        unlabeled=unlabeled,
        x_train=bundle.x_train.to(device),
        y_train=bundle.y_train.to(device),
        autocast_dtype=autocast_dtype,
        scaler=scaler,
    )


def context_state(ctx: Context, step: int, total: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Everything a resumed run needs, as nested tensors and JSON values for `checkpoint.save_checkpoint`."""
    state = {
        "step": step,
        "total_steps": total,
        "config_hash": ctx.cfg.run_hash(),
        "model": ctx.raw_model.state_dict(),
        "ema": ctx.ema.module.state_dict(),
        "ema_updates": ctx.ema.updates,
        "optimizer": ctx.optimizer.state_dict(),
        "algorithm": ctx.algorithm.state_dict(),
        # Per-rank random streams (augmentation, dropout), gathered so that every rank resumes its own.
        "rank_rng": gather_objects(_rank_rng(ctx), ctx.info),
        "labeled_sampler": ctx.labeled.state_dict(),
        **extra,
    }
    if ctx.unlabeled is not None:
        state["unlabeled_sampler"] = ctx.unlabeled.state_dict()
    if ctx.scaler is not None:
        state["scaler"] = ctx.scaler.state_dict()
    return state


def restore_context(ctx: Context, state: dict[str, Any]) -> None:
    """Inverse of `context_state`."""
    ctx.raw_model.load_state_dict(state["model"])
    ctx.ema.module.load_state_dict(state["ema"])
    ctx.ema.updates = int(state["ema_updates"])
    ctx.optimizer.load_state_dict(state["optimizer"])
    ctx.algorithm.load_state_dict(state["algorithm"])
    ranks = state["rank_rng"]
    if len(ranks) != ctx.info.world_size:
        raise ConfigError(
            f"the checkpoint was written by {len(ranks)} process(es), this run has {ctx.info.world_size}: "
            "resume with the same number of processes"
        )
    mine = ranks[ctx.info.rank]
    ctx.augmenter.load_state_dict(mine["augmenter"])
    torch.set_rng_state(mine["torch"].cpu())
    if "cuda" in mine and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"].cpu(), ctx.device)
    ctx.labeled.load_state_dict(state["labeled_sampler"])
    if ctx.unlabeled is not None:
        ctx.unlabeled.load_state_dict(state["unlabeled_sampler"])
    if ctx.scaler is not None and "scaler" in state:
        ctx.scaler.load_state_dict(state["scaler"])


def _rank_rng(ctx: Context) -> dict[str, Any]:
    rng = {"augmenter": ctx.augmenter.state_dict(), "torch": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return rng
