"""SoftMatch (Chen et al. 2023): FixMatch with a truncated-Gaussian weight instead of a hard threshold."""

from __future__ import annotations

from fewlabels.algorithms.base import ALGORITHMS
from fewlabels.algorithms.fixmatch import FixMatch
from fewlabels.algorithms.thresholds import TruncatedGaussianWeight


@ALGORITHMS.register("softmatch")
class SoftMatch(FixMatch):
    """Pseudo-labels above the running mean confidence get weight 1; less confident ones a Gaussian-decayed weight.

    Uniform alignment (on by default) rescales predictions towards a uniform class marginal before weighting.
    """

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        lambda_u: float = 1.0,
        momentum: float = 0.999,
        n_sigma: float = 2.0,
        uniform_alignment: bool = True,
        concat_forward: bool = False,
    ) -> None:
        super().__init__(num_classes, num_unlabeled, lambda_u=lambda_u, concat_forward=concat_forward)
        self.mask_fn = TruncatedGaussianWeight(num_classes, momentum, n_sigma, align=uniform_alignment)
