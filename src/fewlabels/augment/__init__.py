"""Batched per-sample augmentation on the training device: every sample draws its own ops and magnitudes.

Images are (N, C, H, W) uint8 in 0..255 or float in [0, 1] with C = 1 or 3; views come back as float32 in
[0, 1] on the same device. Vectors are (N, D) float32 standardised features.
"""

from fewlabels.augment import ops
from fewlabels.augment.augmenter import MODALITIES, VIEWS, Augmenter
from fewlabels.augment.policies import (
    RANDAUGMENT_OPS,
    RandAugmentPlan,
    apply_randaugment,
    cutout,
    randaugment,
    sample_randaugment,
    strong,
    to_float,
    vector_strong,
    vector_weak,
    weak,
)

__all__ = [
    "MODALITIES",
    "RANDAUGMENT_OPS",
    "VIEWS",
    "Augmenter",
    "RandAugmentPlan",
    "apply_randaugment",
    "cutout",
    "ops",
    "randaugment",
    "sample_randaugment",
    "strong",
    "to_float",
    "vector_strong",
    "vector_weak",
    "weak",
]
