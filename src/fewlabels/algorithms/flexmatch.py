"""FlexMatch (Zhang et al. 2021): FixMatch with class-wise curriculum thresholds."""

from __future__ import annotations

from fewlabels.algorithms.base import ALGORITHMS
from fewlabels.algorithms.fixmatch import FixMatch
from fewlabels.algorithms.thresholds import CurriculumThreshold


@ALGORITHMS.register("flexmatch")
class FlexMatch(FixMatch):
    """Each class's threshold scales with how many unlabeled samples it has confidently claimed so far.

    Classes the model finds hard get low thresholds (more pseudo-labels), easy ones approach `threshold`.
    """

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        threshold: float = 0.95,
        lambda_u: float = 1.0,
        threshold_warmup: bool = True,
        concat_forward: bool = False,
    ) -> None:
        super().__init__(
            num_classes, num_unlabeled, threshold=threshold, lambda_u=lambda_u, concat_forward=concat_forward
        )
        self.mask_fn = CurriculumThreshold(num_unlabeled, num_classes, threshold, warmup=threshold_warmup)
