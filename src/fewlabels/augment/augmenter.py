"""Augmenter: named views of a batch, drawn from the augmenter's own seeded random stream."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from fewlabels.augment.policies import strong, to_float, vector_strong, vector_weak, weak
from fewlabels.errors import ConfigError

VIEWS: tuple[str, ...] = ("none", "weak", "strong")
"""View names an Augmenter makes: 'none' (to_float only), 'weak' and 'strong'. A digit suffix ('weak2', 'strong3')
names another independent draw of the same policy, for algorithms that need several views of one kind."""


def view_policy(view: str) -> str:
    """The policy behind a view name: 'strong2' -> 'strong'."""
    return view.rstrip("0123456789")


MODALITIES: tuple[str, ...] = ("image", "vector")


class Augmenter:
    """Makes named views of a batch: 'none' (to_float only), 'weak', 'strong'.

    Holds its own torch.Generator on the data's device, seeded with `seed`, so views do not depend on (or
    disturb) the global RNG, and `state_dict` / `load_state_dict` let a resumed run continue the same stream.
    """

    def __init__(
        self,
        modality: str = "image",
        hflip: bool = True,
        seed: int = 0,
        translate: float = 0.125,
        num_ops: int = 2,
        cutout_size: float = 0.5,
        feature_stats: tuple[Tensor, Tensor] | None = None,
    ) -> None:
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality {modality!r}; valid modalities are {', '.join(MODALITIES)}")
        self.modality = modality
        self.hflip = hflip
        self.seed = int(seed)
        self.translate = translate
        self.num_ops = num_ops
        self.cutout_size = cutout_size
        # Vectors: per-feature (mean, std) of the training data, so that noise and dropped features are in each
        # feature's own units (None: the features are already standardised).
        self.feature_stats = feature_stats
        # One generator per device, made on first use, since the data's device is known only at call time.
        self._generators: dict[str, torch.Generator] = {}
        # Loaded states of generators not yet made (load_state_dict before the first batch).
        self._pending: dict[str, Tensor] = {}

    def generator(self, device: torch.device | str) -> torch.Generator:
        """This augmenter's generator on `device`, created (seeded, or from a loaded state) on first use."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            # A checkpoint from another GPU index: CUDA generator states carry over between CUDA devices.
            same_kind = [k for k in self._pending if torch.device(k).type == device.type]
            saved = key if key in self._pending else same_kind[0] if len(same_kind) == 1 else None
            if saved is not None:
                gen.set_state(self._pending.pop(saved))
            elif self._pending:
                warnings.warn(
                    f"the augmentation stream was saved on {', '.join(sorted(self._pending))}, and a {device.type} "
                    f"generator cannot continue it: on {key} it restarts from seed {self.seed}, so this resumed "
                    "run's augmentations differ from an uninterrupted run's",
                    UserWarning,
                    stacklevel=2,
                )
            self._generators[key] = gen
        return gen

    def __call__(self, x: Tensor, view: str) -> Tensor:
        """Return the named view of batch `x` as float32 on x's device."""
        view = view_policy(view)
        if view not in VIEWS:
            raise ConfigError(
                f"unknown augmentation view {view!r}; valid views are {', '.join(VIEWS)} (optionally with a digit "
                "suffix such as 'strong2' for another draw)"
            )
        if view == "none":
            return to_float(x)
        gen = self.generator(x.device)
        if self.modality == "vector":
            center, scale = self.feature_stats if self.feature_stats is not None else (None, None)
            if view == "weak":
                return vector_weak(x, gen, scale=scale)
            return vector_strong(x, gen, scale=scale, center=center)
        if view == "weak":
            return weak(x, gen, hflip=self.hflip, translate=self.translate)
        return strong(
            x,
            gen,
            hflip=self.hflip,
            translate=self.translate,
            num_ops=self.num_ops,
            cutout_size=self.cutout_size,
        )

    def state_dict(self) -> dict[str, Any]:
        """The seed and each device generator's state (uint8 CPU tensors), for checkpoints."""
        states = dict(self._pending)
        states.update({key: gen.get_state() for key, gen in self._generators.items()})
        return {"seed": self.seed, "generators": states}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict, so the next views continue the stream where the saved run stopped."""
        self.seed = int(state["seed"])
        self._generators.clear()
        self._pending = {key: value.clone() for key, value in state["generators"].items()}

    def __repr__(self) -> str:
        return (
            f"Augmenter(modality={self.modality!r}, hflip={self.hflip}, seed={self.seed}, "
            f"translate={self.translate}, num_ops={self.num_ops}, cutout_size={self.cutout_size})"
        )
