"""SimCLR (Chen et al. 2020): contrastive pretraining, two augmented views of an image attract, others repel."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewlabels.algorithms.base import ALGORITHMS, Algorithm, Batch, StepContext, StepOutput, Views
from fewlabels.errors import ConfigError


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    temperature: float,
    gather: Callable[[Tensor], Tensor] = lambda t: t,
    offset: int = 0,
) -> Tensor:
    """The NT-Xent loss: for each of the 2N embeddings, cross-entropy of picking its partner view among the other
    2N - 1 by cosine similarity / temperature; averaged over all 2N.

    Under DDP `gather` concatenates the views of every rank (differentiably) and `offset` is this rank's first row
    in it: this rank's 2n embeddings are then the anchors and all 2N of the global batch the candidates, so the
    negatives are those of the global batch, as in one process.
    """
    n = z1.shape[0]
    anchors = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
    k1, k2 = gather(z1), gather(z2)
    total = k1.shape[0]
    keys = F.normalize(torch.cat([k1, k2]).float(), dim=-1)
    sim = anchors @ keys.T / temperature
    own = torch.arange(offset, offset + n, device=sim.device)
    rows = torch.arange(2 * n, device=sim.device)
    self_index = torch.cat([own, own + total])
    sim[rows, self_index] = float("-inf")  # an embedding is not its own candidate
    partner = torch.cat([own + total, own])
    return F.cross_entropy(sim, partner)


@ALGORITHMS.register("simclr")
class SimCLR(Algorithm):
    """loss = NT-Xent(g(f(A1(u))), g(f(A2(u))); temperature) over the unlabeled batch; labels are not used.

    g is the projection head: the model's `neck` layers (set model.neck, e.g. 2: SimCLRv2's 3-layer head with its
    output layer) plus a linear `projection_dim` output added as an auxiliary head (not part of the saved model).
    `temperature` is the NT-Xent tau, 0.5 by default: SimCLR's CIFAR-10 value and the one for CPU-scale batches (a
    few hundred images); ImageNet's 0.1 needs batches in the thousands. The two views are independent strong
    augmentations. Negatives are the other images of the global batch: under
    DDP the embeddings of every rank are gathered (differentiably), so 2 ranks train as 1 process does.
    Evaluation during pretraining uses an untrained classifier, so
    its accuracy means nothing: fine-tune with model.init_from (the `simclr` pipeline does it).
    """

    labels_unused = True

    def __init__(
        self,
        num_classes: int,
        num_unlabeled: int = 0,
        *,
        temperature: float = 0.5,
        projection_dim: int = 64,
    ) -> None:
        super().__init__(num_classes, num_unlabeled)
        if temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.projection_dim = projection_dim
        self.views = Views(labeled=("none",), unlabeled=("strong", "strong2"))

    def extend_model(self, model: nn.Module) -> None:
        model.add_head("projection", self.projection_dim)

    def step(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        assert batch.unlabeled is not None
        v1, v2 = batch.unlabeled["strong"], batch.unlabeled["strong2"]
        logits, heads = model(torch.cat([v1, v2]), with_heads=True)
        z1, z2 = heads["projection"].split([v1.shape[0], v2.shape[0]])
        loss = nt_xent(z1, z2, self.temperature, ctx.all_gather_grad, ctx.rank_offset(z1.shape[0]))
        # The classifier is not trained here; a zero-weight term keeps every parameter in the graph for DDP.
        loss = loss + 0.0 * logits.float().sum()
        with torch.no_grad():
            z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)
            n = z1.shape[0]
            sim = z @ z.T
            sim.fill_diagonal_(-2.0)
            top = sim.argmax(-1)
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
            hit = (top == partner).float().mean()
        return StepOutput(loss=loss, logs={"loss_u": loss.detach(), "contrastive_accuracy": hit})
