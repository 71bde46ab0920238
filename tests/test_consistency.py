"""The consistency family (Pi-model, Mean Teacher, Temporal Ensembling, VAT, MixMatch, ReMixMatch, UDA) and the
shared pieces they compose: losses against hand-computed values, gradient flow (student side yes, teacher side
no), TSA masking, ramp values, and state save/restore."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewlabels.algorithms import Batch, BatchPart, StepContext, create_algorithm
from fewlabels.algorithms.alignment import DistributionAlignment
from fewlabels.algorithms.common import (
    frozen_bn_stats,
    kl_divergence,
    linear_ramp,
    mixup,
    sharpen,
    sigmoid_ramp,
    soft_cross_entropy,
    softmax_mse,
    tsa_threshold,
)
from fewlabels.algorithms.vat import adversarial_perturbation
from fewlabels.engine.checkpoint import flatten, unflatten
from fewlabels.errors import ConfigError
from fewlabels.models import create_model


class Echo(nn.Module):
    """Logits = inputs * scale, so every loss can be computed by hand."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor, with_heads: bool = False):
        out = x * self.scale
        return (out, {}) if with_heads else out


def softmax(row: list[float]) -> list[float]:
    z = [math.exp(v) for v in row]
    return [v / sum(z) for v in z]


def mse(p: list[float], q: list[float]) -> float:
    return sum((a - b) ** 2 for a, b in zip(p, q, strict=True)) / len(p)


def ce(row: list[float], target: int) -> float:
    return -math.log(softmax(row)[target])


X_L = [[2.0, 0.0], [0.0, 1.0]]
Y_L = [0, 1]
U1 = [[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]
U2 = [[3.0, 0.0], [0.0, 0.0], [0.0, 1.0]]
LOSS_L = (ce(X_L[0], 0) + ce(X_L[1], 1)) / 2


def batch(views: dict[str, list], requires_grad: bool = False) -> Batch:
    tensors = {k: torch.tensor(v, requires_grad=requires_grad) for k, v in views.items()}
    labeled = BatchPart({"weak": torch.tensor(X_L)}, y=torch.tensor(Y_L))
    return Batch(labeled=labeled, unlabeled=BatchPart(tensors, index=torch.arange(3)))


def ctx(step: int = 40, total: int = 100, ema: nn.Module | None = None) -> StepContext:
    return StepContext(step=step, total_steps=total, num_classes=2, ema=ema)


# --- shared pieces -------------------------------------------------------------------------------------------------


def test_ramps_by_hand():
    assert sigmoid_ramp(0.0, 0.4) == pytest.approx(math.exp(-5))  # ~0.0067
    assert sigmoid_ramp(0.2, 0.4) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_ramp(0.4, 0.4) == 1.0 and sigmoid_ramp(0.9, 0.4) == 1.0
    assert linear_ramp(0.1, 0.4) == pytest.approx(0.25) and linear_ramp(0.5, 0.4) == 1.0
    assert sigmoid_ramp(0.0, 0.0) == 1.0 and linear_ramp(0.0, 0.0) == 1.0


def test_sharpen_and_distances_by_hand():
    p = torch.tensor([[0.6, 0.4]])
    assert sharpen(p, 0.5).tolist()[0] == pytest.approx([0.36 / 0.52, 0.16 / 0.52])
    assert torch.allclose(sharpen(p, 1.0), p)
    logits, q = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.25, 0.75]])
    s = softmax([1.0, 0.0])
    assert softmax_mse(logits, q).item() == pytest.approx(mse(s, [0.25, 0.75]))
    by_hand = sum(a * math.log(a / b) for a, b in zip([0.25, 0.75], s, strict=True))
    assert kl_divergence(q, logits).item() == pytest.approx(by_hand)
    assert kl_divergence(torch.tensor([[1.0, 0.0]]), logits).item() == pytest.approx(-math.log(s[0]))  # 0 log 0 = 0
    assert kl_divergence(torch.tensor([s]), logits).item() == pytest.approx(0.0, abs=1e-7)
    assert soft_cross_entropy(logits, q).item() == pytest.approx(-(0.25 * math.log(s[0]) + 0.75 * math.log(s[1])))


def test_mixup_keeps_each_row_closer_to_itself():
    torch.manual_seed(0)
    x, y = torch.arange(8.0)[:, None], F.one_hot(torch.arange(8) % 2, 2).float()
    mixed_x, mixed_y, lam = mixup(x, y, 0.75)
    assert 0.5 <= lam <= 1.0
    partner = (mixed_x - lam * x) / (1 - lam)  # recovers the permuted partner of each row
    assert sorted(partner.round().squeeze(1).tolist()) == x.squeeze(1).tolist()
    perm = partner.round().long().squeeze(1)
    assert torch.allclose(mixed_y, lam * y + (1 - lam) * y[perm])


@pytest.mark.parametrize("schedule", ["linear", "log", "exp"])
def test_tsa_schedules_start_near_one_over_k_and_end_near_one(schedule):
    # The official formulas: log ends at 1 - e^-5 and exp starts at e^-5 of the way, not exactly at 1 and 1/K.
    start = {"linear": 0.1, "log": 0.1, "exp": 0.9 * math.exp(-5) + 0.1}[schedule]
    end = {"linear": 1.0, "log": 0.9 * (1 - math.exp(-5)) + 0.1, "exp": 1.0}[schedule]
    assert tsa_threshold(schedule, 0.0, 10) == pytest.approx(start)
    assert tsa_threshold(schedule, 1.0, 10) == pytest.approx(end)
    assert end > 0.99 and start < 0.11
    values = [tsa_threshold(schedule, t / 10, 10) for t in range(11)]
    assert values == sorted(values)  # non-decreasing
    assert tsa_threshold("none", 0.0, 10) == 1.0


def test_tsa_midpoints_by_hand():
    assert tsa_threshold("linear", 0.5, 4) == pytest.approx(0.5 * 0.75 + 0.25)
    assert tsa_threshold("log", 0.5, 4) == pytest.approx((1 - math.exp(-2.5)) * 0.75 + 0.25)
    assert tsa_threshold("exp", 0.5, 4) == pytest.approx(math.exp(-2.5) * 0.75 + 0.25)


def test_frozen_bn_stats_keeps_running_statistics():
    bn = nn.BatchNorm1d(3)
    bn(torch.randn(16, 3))
    mean, var, tracked = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    with frozen_bn_stats(bn):
        out = bn(torch.randn(16, 3) * 5 + 2)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, tracked) and bn.momentum == 0.1
    assert out.mean(0).abs().max() < 1e-5  # still normalised with the batch's own statistics


def test_distribution_alignment_by_hand():
    da = DistributionAlignment(2, buffer=2)
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]])  # mean prediction (0.8, 0.2)
    aligned = da(probs, labels=torch.tensor([0, 1]))  # labeled marginal (0.5, 0.5)
    ratio = torch.tensor([0.5 / 0.8, 0.5 / 0.2])
    expected = probs * ratio / (probs * ratio).sum(-1, keepdim=True)
    assert torch.allclose(aligned, expected)
    assert torch.allclose(aligned.mean(0), torch.tensor([0.5, 0.5]), atol=0.08)  # pulled towards the marginal
    da(torch.tensor([[0.5, 0.5]]))
    da(torch.tensor([[0.2, 0.8]]))  # the buffer of 2 now holds only the last two batch means
    assert torch.allclose(da.p_model(), torch.tensor([0.35, 0.65]))
    assert torch.allclose(da.p_target(), torch.tensor([0.5, 0.5]))


def test_distribution_alignment_targets_the_labeled_marginal_and_gathers_ranks():
    other = {"labels": torch.tensor([0, 0]), "probs": torch.tensor([[0.5, 0.5], [0.5, 0.5]])}  # a simulated 2nd rank

    def gather(t):
        return torch.cat([t, other["labels"] if t.dtype == torch.long else other["probs"].to(t)])

    da = DistributionAlignment(2, buffer=4)
    probs = torch.tensor([[0.6, 0.4], [0.3, 0.7]])
    aligned = da(probs, labels=torch.tensor([0, 1]), gather=gather)
    # Labels of both ranks: 0, 1, 0, 0 -> p_target (0.75, 0.25); mean prediction of both: (0.475, 0.525).
    assert torch.allclose(da.p_target(), torch.tensor([0.75, 0.25]))
    assert torch.allclose(da.p_model(), torch.tensor([0.475, 0.525]))
    ratio = torch.tensor([0.75 / 0.475, 0.25 / 0.525])
    expected = probs * ratio / (probs * ratio).sum(-1, keepdim=True)
    assert torch.allclose(aligned, expected, atol=1e-6)
    assert aligned[1].argmax() == 0  # the skewed target flips the second row towards the majority class


# --- Pi-model ------------------------------------------------------------------------------------------------------


def test_pi_model_loss_by_hand():
    out = create_algorithm("pi_model", 2, 3).step(Echo(), batch({"weak": U1, "weak2": U2}), ctx(step=40))
    cons = sum(mse(softmax(a), softmax(b)) for a, b in zip(U1, U2, strict=True)) / 3
    assert out.loss.item() == pytest.approx(LOSS_L + 10.0 * cons, rel=1e-5)  # ramp complete at 0.4
    early = create_algorithm("pi_model", 2, 3).step(Echo(), batch({"weak": U1, "weak2": U2}), ctx(step=0))
    assert early.loss.item() == pytest.approx(LOSS_L + 10.0 * math.exp(-5) * cons, rel=1e-5)


@pytest.mark.parametrize(("detach", "second_view_grad"), [(True, False), (False, True)])
def test_pi_model_gradient_flow(detach, second_view_grad):
    b = batch({"weak": U1, "weak2": U2}, requires_grad=True)
    algo = create_algorithm("pi_model", 2, 3, detach_target=detach)
    out = algo.step(Echo(), b, ctx())
    out.loss.backward()
    assert b.unlabeled["weak"].grad is not None and b.unlabeled["weak"].grad.abs().sum() > 0
    second = b.unlabeled["weak2"].grad
    assert (second is not None and second.abs().sum() > 0) == second_view_grad


# --- Mean Teacher --------------------------------------------------------------------------------------------------


def test_mean_teacher_loss_by_hand_and_teacher_gets_no_gradient():
    student, teacher = Echo(1.0), Echo(2.0)
    teacher.eval()
    out = create_algorithm("mean_teacher", 2, 3).step(student, batch({"weak": U1, "weak2": U2}), ctx(ema=teacher))
    targets = [softmax([2.0 * v for v in row]) for row in U2]
    cons = sum(mse(softmax(a), t) for a, t in zip(U1, targets, strict=True)) / 3
    assert out.loss.item() == pytest.approx(LOSS_L + 50.0 * cons, rel=1e-5)
    out.loss.backward()
    assert teacher.scale.grad is None  # the teacher side of the consistency loss has no gradient
    assert not teacher.training  # put back in eval mode after its train-mode pass


def test_mean_teacher_consistency_alone_trains_the_student():
    # USB's bug: student logits taken from the teacher, so the consistency loss has no gradient at all.
    student = Echo(1.0)
    algo = create_algorithm("mean_teacher", 2, 3)
    b = batch({"weak": U1, "weak2": U2})
    b.labeled.views["weak"] = torch.zeros(2, 2)  # constant logits: the labeled loss has no gradient w.r.t. scale
    algo.step(student, b, ctx(ema=Echo(2.0))).loss.backward()
    assert student.scale.grad is not None and student.scale.grad.abs().item() > 1e-4


def test_mean_teacher_teacher_runs_in_train_mode_batch_statistics():
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    create_algorithm("mean_teacher", 2, 3).step(Echo(), batch({"weak": U1, "weak2": U2}), ctx(ema=Spy().eval()))
    assert seen == [True]


def test_mean_teacher_without_teacher_is_a_clear_error():
    with pytest.raises(ConfigError, match="EMA"):
        create_algorithm("mean_teacher", 2, 3).step(Echo(), batch({"weak": U1, "weak2": U2}), ctx())


# --- Temporal Ensembling -------------------------------------------------------------------------------------------


def test_temporal_ensembling_targets_by_hand_with_bias_correction():
    algo = create_algorithm("temporal_ensembling", 2, 3, alpha=0.6)
    first = algo.step(Echo(), batch({"weak": U1}), ctx())
    assert first.logs["mask"].item() == 0.0  # no sample has a target before its first visit
    assert first.loss.item() == pytest.approx(LOSS_L, rel=1e-6)
    p1 = torch.tensor([softmax(r) for r in U1])
    assert torch.allclose(algo.ensemble, 0.4 * p1)
    target, seen = algo.targets(torch.arange(3))
    assert seen.all() and torch.allclose(target, p1, atol=1e-6)  # bias correction: z~ = z after one visit
    second = algo.step(Echo(), batch({"weak": U2}), ctx())
    cons = sum(mse(softmax(a), p) for a, p in zip(U2, p1.tolist(), strict=True)) / 3
    assert second.loss.item() == pytest.approx(LOSS_L + 10.0 * cons, rel=1e-5)
    p2 = torch.tensor([softmax(r) for r in U2])
    target, _ = algo.targets(torch.arange(3))
    assert torch.allclose(target, (0.6 * 0.4 * p1 + 0.4 * p2) / (1 - 0.6**2), atol=1e-6)


def test_temporal_ensembling_only_visited_samples_move():
    algo = create_algorithm("temporal_ensembling", 2, 5)
    b = batch({"weak": U1})
    b.unlabeled.index = torch.tensor([4, 0, 2])
    algo.step(Echo(), b, ctx())
    assert algo.visits.tolist() == [1, 0, 1, 0, 1]
    assert algo.ensemble[1].abs().sum() == 0 and algo.ensemble[4].abs().sum() > 0


def test_temporal_ensembling_gradient_reaches_the_prediction_not_the_target():
    algo = create_algorithm("temporal_ensembling", 2, 3)
    algo.step(Echo(), batch({"weak": U1}), ctx())
    b = batch({"weak": U2}, requires_grad=True)
    before = algo.ensemble.clone()
    algo.step(Echo(), b, ctx()).loss.backward()
    assert b.unlabeled["weak"].grad.abs().sum() > 0
    assert not algo.ensemble.requires_grad and not torch.equal(algo.ensemble, before)


# --- VAT -----------------------------------------------------------------------------------------------------------


def test_vat_perturbation_has_radius_eps_and_is_adversarial():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(32, 6)
    with torch.no_grad():
        target = model(x).softmax(-1)
    r_adv = adversarial_perturbation(model, x, target, eps=0.5, iterations=2)
    assert torch.allclose(r_adv.norm(dim=1), torch.full((32,), 0.5), atol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # only the direction was differentiated
    random = torch.randn(50, *x.shape)
    random = 0.5 * random / random.norm(dim=2, keepdim=True)
    with torch.no_grad():
        adv_kl = kl_divergence(target, model(x + r_adv))
        rand_kl = torch.stack([kl_divergence(target, model(x + r)) for r in random])
    # per sample, the found direction beats the 90th percentile of 50 random directions of the same norm
    assert (adv_kl > rand_kl.quantile(0.9, dim=0)).float().mean() > 0.9
    assert adv_kl.mean() > 2 * rand_kl.mean()


def test_vat_default_radius_scales_with_input_size():
    algo = create_algorithm("vat", 2, 3)
    assert algo.radius(torch.zeros(1, 1, 28, 28)) == pytest.approx(2.0)
    assert algo.radius(torch.zeros(1, 3, 56, 56)) == pytest.approx(2.0 * math.sqrt(12))
    assert create_algorithm("vat", 2, 3, eps=6.0).radius(torch.zeros(1, 64)) == 6.0


def test_vat_loss_by_hand_and_gradient_flow():
    model = Echo(1.0)
    algo = create_algorithm("vat", 2, 3, eps=0.3, entmin_weight=0.1)
    torch.manual_seed(0)
    out = algo.step(model, batch({"weak": U1}), ctx())
    # By hand: with logits = x, the gradient of KL(p || softmax(x + xi d)) in d is xi (softmax(x + xi d) - p), so
    # one power iteration from the random unit direction d0 points along q - p; r_adv is that at norm eps.
    u, x_l = torch.tensor(U1), torch.tensor(X_L)
    p = u.softmax(-1)
    torch.manual_seed(0)
    d0 = torch.randn(3, 2)
    g = (u + 1e-3 * d0 / d0.norm(dim=1, keepdim=True)).softmax(-1) - p
    r = 0.3 * g / g.norm(dim=1, keepdim=True)
    s = torch.tensor(1.0, requires_grad=True)  # the model's scale, for the gradient by hand
    q = (s * u).softmax(-1)
    kl = (p * (p.log() - (s * (u + r)).log_softmax(-1))).sum(-1).mean()
    hand = F.cross_entropy(s * x_l, torch.tensor(Y_L)) + 0.3 * kl + 0.1 * -(q * q.log()).sum(-1).mean()
    assert out.loss.item() == pytest.approx(hand.item(), rel=1e-4)
    out.loss.backward()
    hand.backward()  # the target and r_adv are constants: the gradient flows through the two training terms only
    assert model.scale.grad.item() == pytest.approx(s.grad.item(), rel=1e-3)


def test_vat_target_is_float32_under_autocast(monkeypatch):
    import fewlabels.algorithms.vat as vat_module

    seen = {}
    real = vat_module.adversarial_perturbation

    def spy(model, x, target, *args, **kwargs):
        seen["target"] = target
        return real(model, x, target, *args, **kwargs)

    monkeypatch.setattr(vat_module, "adversarial_perturbation", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
    u = torch.randn(8, 6)
    b = Batch(
        labeled=BatchPart({"weak": torch.randn(2, 6)}, y=torch.tensor([0, 1])),
        unlabeled=BatchPart({"weak": u}, index=torch.arange(8)),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        create_algorithm("vat", 3, 8).step(model, b, StepContext(step=50, total_steps=100, num_classes=3))
        bf16 = model(u).float().softmax(-1)
    with torch.no_grad():
        fp32 = model(u).softmax(-1)
    assert seen["target"].dtype == torch.float32
    assert torch.allclose(seen["target"], fp32, atol=1e-6)  # the power iteration's passes are float32 too
    assert not torch.allclose(bf16, fp32, atol=1e-6)  # a bf16 target would differ from them


def test_vat_adversarial_passes_leave_batchnorm_statistics_alone():
    model = nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 2))
    create_algorithm("vat", 2, 3).step(model, batch({"weak": U1}), ctx())
    # one no-grad target pass + one training pass; the power iteration's pass is not counted
    assert model[0].num_batches_tracked.item() == 2


def test_vat_target_and_power_iteration_run_without_dropout():
    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.drop, self.linear, self.modes = nn.Dropout(0.5), nn.Linear(2, 2), []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.modes.append(self.drop.training)
            return self.linear(self.drop(x))

    model = Spy()
    create_algorithm("vat", 2, 3).step(model, batch({"weak": U1}), ctx())
    # the clean target and the power iteration see one function; the training pass keeps its dropout
    assert model.modes[:2] == [False, False] and len(model.modes) > 2 and all(model.modes[2:])
    assert model.drop.training


# --- MixMatch ------------------------------------------------------------------------------------------------------


def test_mixmatch_loss_by_hand():
    algo = create_algorithm("mixmatch", 2, 3, num_views=2)
    assert algo.views.unlabeled == ("weak", "weak2")
    torch.manual_seed(0)
    out = algo.step(Echo(), batch({"weak": U1, "weak2": U2}), ctx(step=40))
    probs = (torch.tensor([softmax(r) for r in U1]) + torch.tensor([softmax(r) for r in U2])) / 2
    guess = sharpen(probs, 0.5)
    x = torch.cat([torch.tensor(X_L), torch.tensor(U1), torch.tensor(U2)])
    y = torch.cat([F.one_hot(torch.tensor(Y_L), 2).float(), guess, guess])
    torch.manual_seed(0)
    lam = float(torch.distributions.Beta(0.75, 0.75).sample())
    lam = max(lam, 1 - lam)
    perm = torch.randperm(8)
    mx, my = lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    loss_l = soft_cross_entropy(mx[:2], my[:2]).mean()
    loss_u = softmax_mse(mx[2:], my[2:]).mean()
    assert out.logs["mixup_lambda"] == pytest.approx(lam)
    assert out.loss.item() == pytest.approx((loss_l + 100.0 * loss_u).item(), rel=1e-5)


def test_mixmatch_guess_has_no_gradient():
    # alpha = 0 gives lam = 1 (no mixing), so the unlabeled loss is mse(softmax(u_k), guess) for each view k.
    b = batch({"weak": U1, "weak2": U2}, requires_grad=True)
    out = create_algorithm("mixmatch", 2, 3, alpha=0.0).step(Echo(), b, ctx(step=40))
    assert out.logs["mixup_lambda"] == 1.0
    out.loss.backward()
    u1, u2 = torch.tensor(U1, requires_grad=True), torch.tensor(U2, requires_grad=True)
    guess = sharpen((torch.tensor([softmax(r) for r in U1]) + torch.tensor([softmax(r) for r in U2])) / 2, 0.5)
    expected = 100.0 * softmax_mse(torch.cat([u1, u2]), torch.cat([guess, guess])).mean()
    expected.backward()  # the guess as a constant: the student branch alone carries gradient
    assert torch.allclose(b.unlabeled["weak"].grad, u1.grad, atol=1e-6)
    assert torch.allclose(b.unlabeled["weak2"].grad, u2.grad, atol=1e-6)


# --- ReMixMatch ----------------------------------------------------------------------------------------------------


def test_remixmatch_loss_by_hand():
    algo = create_algorithm("remixmatch", 2, 3, num_strong=2)
    assert algo.views.unlabeled == ("weak", "strong", "strong2")
    algo.extend_model(Echo())  # no input_shape: no rotation head
    assert not algo.rotation
    torch.manual_seed(0)
    out = algo.step(Echo(), batch({"weak": U1, "strong": U2, "strong2": U1}), ctx(step=40))
    probs = torch.tensor([softmax(r) for r in U1])
    ratio = torch.tensor([0.5, 0.5]) / probs.mean(0)  # the first batch's alignment
    aligned = probs * ratio / (probs * ratio).sum(-1, keepdim=True)
    guess = sharpen(aligned, 0.5)
    x = torch.cat([torch.tensor(X_L), torch.tensor(U2), torch.tensor(U1)])
    y = torch.cat([F.one_hot(torch.tensor(Y_L), 2).float(), guess, guess])
    torch.manual_seed(0)
    lam = float(torch.distributions.Beta(0.75, 0.75).sample())
    lam = max(lam, 1 - lam)
    perm = torch.randperm(8)
    mx, my = lam * x + (1 - lam) * x[perm], lam * y + (1 - lam) * y[perm]
    loss_l = soft_cross_entropy(mx[:2], my[:2]).mean()
    loss_u = soft_cross_entropy(mx[2:], my[2:]).mean()
    loss_u1 = soft_cross_entropy(torch.tensor(U2), guess).mean()
    assert out.loss.item() == pytest.approx((loss_l + 1.5 * loss_u + 0.5 * loss_u1).item(), rel=1e-5)


def test_remixmatch_weak_view_only_makes_the_guess():
    """The weak view feeds the guess under no_grad; the strong views carry the gradient."""
    algo = create_algorithm("remixmatch", 2, 3, num_strong=2)
    algo.extend_model(Echo())
    b = batch({"weak": U1, "strong": U2, "strong2": U1}, requires_grad=True)
    out = algo.step(Echo(), b, ctx(step=40))
    out.loss.backward()
    assert b.unlabeled["weak"].grad is None
    assert b.unlabeled["strong"].grad.abs().sum() > 0 and b.unlabeled["strong2"].grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "options", "views", "step", "total", "ramp"),
    [
        # MixMatch: lambda_u 100 ramped linearly over the first 40% (USB): step 10 of 100 -> 0.25.
        ("mixmatch", {"num_views": 2}, {"weak": U1, "weak2": U2}, 10, 100, 0.25),
        # ReMixMatch: both unlabeled terms ramped over the first 1/64 (official): step 1 of 128 -> 0.5.
        ("remixmatch", {"num_strong": 2}, {"weak": U1, "strong": U2, "strong2": U1}, 1, 128, 0.5),
    ],
)
def test_mixmatch_family_ramps_the_unlabeled_weight(name, options, views, step, total, ramp):
    algo = create_algorithm(name, 2, 3, **options)
    torch.manual_seed(0)
    out = algo.step(Echo(), batch(views), ctx(step=step, total=total))
    logs = {k: float(v) for k, v in out.logs.items()}
    if name == "mixmatch":
        assert logs["lambda_u"] == pytest.approx(100.0 * ramp)
        expected = logs["loss_l"] + 100.0 * ramp * logs["loss_u"]
    else:
        assert logs["ramp"] == pytest.approx(ramp)
        expected = logs["loss_l"] + ramp * (1.5 * logs["loss_u"] + 0.5 * logs["loss_u1"])
    assert logs["loss_u"] > 0 and out.loss.item() == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    start = create_algorithm(name, 2, 3, **options).step(Echo(), batch(views), ctx(step=0, total=total))
    assert start.loss.item() == pytest.approx(float(start.logs["loss_l"]), rel=1e-6)  # weight 0 at the start


def test_remixmatch_rotation_head_is_trained_and_left_out_of_the_saved_model(tmp_path):
    from fewlabels.data import load_dataset
    from fewlabels.engine.run import save_model

    model = create_model("cnn", num_classes=2, input_shape=(1, 16, 16))
    algo = create_algorithm("remixmatch", 2, 8)
    algo.extend_model(model)
    assert algo.rotation and "rotation" in model.heads
    torch.manual_seed(0)
    views = {k: torch.rand(8, 1, 16, 16) for k in ("weak", "strong", "strong2")}
    b = Batch(
        labeled=BatchPart({"weak": torch.rand(4, 1, 16, 16)}, y=torch.tensor([0, 1, 0, 1])),
        unlabeled=BatchPart(views, index=torch.arange(8)),
    )
    out = algo.step(model, b, StepContext(step=50, total_steps=100, num_classes=2))
    out.loss.backward()
    assert out.logs["loss_rot"] > 0
    assert model.heads["rotation"].weight.grad.abs().sum() > 0
    vectors = create_model("mlp", num_classes=2, input_shape=(6,))
    other = create_algorithm("remixmatch", 2, 8)
    other.extend_model(vectors)
    assert not other.rotation and len(vectors.heads) == 0  # rotations mean nothing for vectors
    bundle = load_dataset("digits")
    from fewlabels.config import resolve_config

    save_model(tmp_path, model, bundle, resolve_config(), name="model")
    from safetensors.torch import load_file

    assert not any(k.startswith("heads.") for k in load_file(str(tmp_path / "model.safetensors")))


def test_rotation_turns_each_image_by_its_own_angle():
    from fewlabels.algorithms.remixmatch import rotate

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(12, 1, 1, 1)
    torch.manual_seed(0)
    turned, k = rotate(x)
    assert len(set(k.tolist())) > 1
    for i in range(12):
        assert torch.equal(turned[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))


# --- UDA -----------------------------------------------------------------------------------------------------------


def test_uda_loss_by_hand_with_strict_confidence_mask():
    orig = [[4.0, 0.0], [0.0, 0.5], [0.0, 1.3862944]]  # confidences 0.982, 0.622, 0.8 (exactly: not > 0.8)
    strong = [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
    out = create_algorithm("uda", 2, 3).step(Echo(), batch({"none": orig, "strong": strong}), ctx())
    assert out.pseudo[1].tolist() == [1.0, 0.0, 0.0]
    target = softmax([4.0 / 0.4, 0.0])  # sharpened with T = 0.4
    s = softmax(strong[0])
    kl = sum(t * math.log(t / q) for t, q in zip(target, s, strict=True) if t > 0)
    assert out.loss.item() == pytest.approx(LOSS_L + kl / 3, rel=1e-5)  # averaged over the whole unlabeled batch


def test_uda_target_side_has_no_gradient():
    b = batch({"none": U1, "strong": U2}, requires_grad=True)
    create_algorithm("uda", 2, 3, threshold=0.0).step(Echo(), b, ctx()).loss.backward()
    assert b.unlabeled["none"].grad is None
    assert b.unlabeled["strong"].grad.abs().sum() > 0


def test_uda_tsa_drops_confident_labeled_examples():
    # labeled true-class probabilities: 0.881 and 0.731; linear TSA at t = 0.5 with K = 2 gives eta = 0.75
    algo = create_algorithm("uda", 2, 3, tsa="linear", threshold=1.0)
    out = algo.step(Echo(), batch({"none": U1, "strong": U2}), ctx(step=50))
    assert out.logs["tsa_threshold"] == pytest.approx(0.75)
    assert out.logs["tsa_kept"].item() == 0.5
    assert out.loss.item() == pytest.approx(ce(X_L[1], 1), rel=1e-5)  # mean over the one kept example
    late = algo.step(Echo(), batch({"none": U1, "strong": U2}), ctx(step=100))
    assert late.logs["tsa_kept"].item() == 1.0 and late.loss.item() == pytest.approx(LOSS_L, rel=1e-5)
    early = algo.step(Echo(), batch({"none": U1, "strong": U2}), ctx(step=0))
    assert early.logs["tsa_kept"].item() == 0.0 and early.loss.item() == 0.0  # eta = 1/K: nothing trained yet


def test_uda_tsa_normalises_by_the_kept_count_of_the_global_batch():
    # Simulated second DDP rank that kept both of its labeled examples: 3 kept in all, 1 of them here. With DDP's
    # averaging over 2 ranks this rank's loss must be 2 * (its kept CE sum) / 3, so the mean is sum / 3 overall.
    other_rank = torch.ones(2)
    two_ranks = StepContext(
        step=50, total_steps=100, num_classes=2, all_gather=lambda t: torch.cat([t, other_rank.to(t)])
    )
    algo = create_algorithm("uda", 2, 3, tsa="linear", threshold=1.0)
    out = algo.step(Echo(), batch({"none": U1, "strong": U2}), two_ranks)
    assert out.logs["tsa_kept"].item() == 0.5  # here: example 1 kept, as in the one-process test above
    assert out.loss.item() == pytest.approx(2 * ce(X_L[1], 1) / 3, rel=1e-5)


def test_uda_rejects_unknown_tsa_schedule():
    with pytest.raises(ConfigError, match="linear, log, exp"):
        create_algorithm("uda", 2, 3, tsa="cosine")


# --- state ---------------------------------------------------------------------------------------------------------

VIEWS = {
    "pi_model": {"weak": U1, "weak2": U2},
    "mean_teacher": {"weak": U1, "weak2": U2},
    "temporal_ensembling": {"weak": U1},
    "vat": {"weak": U1},
    "mixmatch": {"weak": U1, "weak2": U2},
    "remixmatch": {"weak": U1, "strong": U2, "strong2": U1},
    "uda": {"none": U1, "strong": U2},
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_state_round_trip_continues_identically(name):
    teacher = Echo(1.5).eval()
    a = create_algorithm(name, 2, 3)
    for step in range(3):
        a.step(Echo(), batch(VIEWS[name]), ctx(step=step, ema=teacher))
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(a.state_dict(), "algo", tensors)  # the way checkpoints store it
    b = create_algorithm(name, 2, 3)
    b.load_state_dict(unflatten(tree, {k: v.clone() for k, v in tensors.items()}))
    torch.manual_seed(1)
    out_a = a.step(Echo(), batch(VIEWS[name]), ctx(step=3, ema=teacher))
    torch.manual_seed(1)
    out_b = b.step(Echo(), batch(VIEWS[name]), ctx(step=3, ema=teacher))
    assert out_a.loss.item() == out_b.loss.item()
    for key, value in a.state_dict().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b.state_dict()[key]))
    if name not in ("temporal_ensembling", "remixmatch"):  # stateless: nothing saved, foreign state refused
        assert a.state_dict() == {}
        with pytest.raises(ValueError, match="keeps no state"):
            b.load_state_dict({"targets": torch.zeros(3, 2)})


@pytest.mark.parametrize("name", ["temporal_ensembling", "remixmatch"])
def test_stateful_algorithms_change_state_when_they_train(name):
    a = create_algorithm(name, 2, 3)
    before = {k: torch.as_tensor(v).clone() for k, v in a.state_dict().items()}
    a.step(Echo(), batch(VIEWS[name]), ctx())
    assert any(not torch.equal(before[k], torch.as_tensor(v)) for k, v in a.state_dict().items())


def test_temporal_ensembling_refuses_state_of_another_pool():
    a, b = create_algorithm("temporal_ensembling", 2, 3), create_algorithm("temporal_ensembling", 2, 5)
    with pytest.raises(ConfigError, match="new --out"):
        b.load_state_dict(a.state_dict())
