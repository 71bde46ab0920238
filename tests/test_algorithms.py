"""Each algorithm against hand-computed losses, gradient flow, and state save/restore."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fewlabels.algorithms import Batch, BatchPart, StepContext, create_algorithm, list_algorithms
from fewlabels.algorithms.freematch import fairness_loss
from fewlabels.algorithms.thresholds import (
    CurriculumThreshold,
    SelfAdaptiveThreshold,
    TruncatedGaussianWeight,
)
from fewlabels.engine.checkpoint import flatten, unflatten
from fewlabels.errors import ConfigError, check_options, did_you_mean


class Echo(nn.Module):
    """A 'model' whose logits are its inputs times a scalar weight, so losses can be computed by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def ce(logits: list[float], target: int) -> float:
    return -logits[target] + math.log(sum(math.exp(v) for v in logits))


def softmax_max(logits: list[float]) -> float:
    z = [math.exp(v) for v in logits]
    return max(z) / sum(z)


X_L = [[2.0, 0.0], [0.0, 1.0]]
Y_L = [0, 1]
U_W = [[4.0, 0.0], [0.0, 0.5], [0.0, 5.0]]  # confidences 0.982, 0.622, 0.993
U_S = [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]
LOSS_L = (ce(X_L[0], 0) + ce(X_L[1], 1)) / 2


def make_batch(requires_grad: bool = False) -> Batch:
    weak = torch.tensor(U_W, requires_grad=requires_grad)
    strong = torch.tensor(U_S, requires_grad=requires_grad)
    labeled = BatchPart({"weak": torch.tensor(X_L)}, y=torch.tensor(Y_L))
    unlabeled = BatchPart({"weak": weak, "strong": strong}, index=torch.arange(3))
    return Batch(labeled=labeled, unlabeled=unlabeled)


def ctx(step: int = 0, total: int = 100) -> StepContext:
    return StepContext(step=step, total_steps=total, num_classes=2)


def test_registry_lists_the_core_algorithms():
    assert {"supervised", "pseudo_label", "fixmatch", "flexmatch", "freematch", "softmatch"} <= set(list_algorithms())


def test_unknown_algorithm_and_option_are_named_with_suggestions():
    with pytest.raises(ConfigError, match="fixmatch"):
        create_algorithm("fixmatc", num_classes=2)
    with pytest.raises(ConfigError, match="threshold"):
        create_algorithm("fixmatch", num_classes=2, treshold=0.9)


def test_suggestions_name_close_matches_only():
    assert did_you_mean("treshold", ["threshold", "temperature"]) == "did you mean 'threshold'? "
    assert did_you_mean("xyz", ["threshold", "temperature"]) == ""
    assert did_you_mean("lr", ["lr_a", "lr_b", "lr_c"], n=2).count("'lr_") == 2
    check_options("fixmatch", ["threshold"], ["threshold", "temperature"])  # a valid name passes
    with pytest.raises(ConfigError, match=r"^algorithm 'x' has no option 'b': its options are: none$"):
        check_options("x", ["b"], [])


def test_softmatch_alignment_stays_finite_when_a_class_mean_is_zero():
    weight = TruncatedGaussianWeight(num_classes=3)
    probs = torch.tensor([[0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])  # class 2 never predicted: its mean is exactly 0
    w = weight(probs)
    assert torch.allclose(weight.class_probs, torch.tensor([0.45, 0.55, 0.0]))
    # aligned rows (by hand): [0.6/0.45, 0.4/0.55, 0] and [0.3/0.45, 0.7/0.55, 0], each normalised
    a0, a1 = torch.tensor([0.6 / 0.45, 0.4 / 0.55]), torch.tensor([0.3 / 0.45, 0.7 / 0.55])
    aligned = torch.stack([torch.cat([a / a.sum(), torch.zeros(1)]) for a in (a0, a1)])
    assert torch.allclose(weight._align(probs), aligned, atol=1e-5)
    # both confidences (0.647, 0.656) lie above the running mean (about 1/3): full weight, not NaN
    assert torch.equal(w, torch.ones(2))


def test_supervised_loss_is_cross_entropy():
    out = create_algorithm("supervised", 2).step(Echo(), make_batch(), ctx())
    assert out.loss.item() == pytest.approx(LOSS_L, rel=1e-6)


def test_fixmatch_loss_by_hand():
    out = create_algorithm("fixmatch", 2, 3).step(Echo(), make_batch(), ctx())
    # Samples 0 and 2 pass the 0.95 threshold with pseudo-labels 0 and 1; the sum is divided by all 3 samples.
    loss_u = (ce(U_S[0], 0) + ce(U_S[2], 1)) / 3
    assert out.loss.item() == pytest.approx(LOSS_L + loss_u, rel=1e-6)
    assert out.logs["mask"].item() == pytest.approx(2 / 3)
    assert out.pseudo[0].tolist() == [0, 1, 1]
    assert out.pseudo[1].tolist() == [1.0, 0.0, 1.0]


def test_fixmatch_threshold_is_inclusive():
    conf = softmax_max(U_W[0])
    out = create_algorithm("fixmatch", 2, 3, threshold=conf).step(Echo(), make_batch(), ctx())
    assert out.pseudo[1][0].item() == 1.0


def test_fixmatch_gradients_reach_strong_view_only_where_masked():
    batch = make_batch(requires_grad=True)
    out = create_algorithm("fixmatch", 2, 3).step(Echo(), batch, ctx())
    out.loss.backward()
    assert batch.unlabeled["weak"].grad is None  # the pseudo-labelling pass has no gradient
    grad = batch.unlabeled["strong"].grad
    assert grad[0].abs().sum() > 0 and grad[2].abs().sum() > 0
    assert grad[1].abs().sum() == 0  # masked out


@pytest.mark.parametrize("name", ["fixmatch", "flexmatch", "freematch", "softmatch"])
def test_gradients_skip_the_weak_view_and_follow_the_mask(name):
    """The pseudo-labelling pass has no gradient; a strong-view row gets one exactly where its weight is non-zero."""
    algo = create_algorithm(name, 2, 3)
    for step in range(2):  # past the first step, so the adaptive thresholds have some history
        batch = make_batch(requires_grad=True)
        model = Echo()
        out = algo.step(model, batch, ctx(step=step))
        out.loss.backward()
        assert batch.unlabeled["weak"].grad is None
        weight = out.pseudo[1]
        grad = batch.unlabeled["strong"].grad.abs().sum(-1)
        assert torch.equal(grad > 0, weight > 0), (name, step, grad, weight)
        assert model.scale.grad is not None and model.scale.grad.abs() > 0


def test_softmatch_step_by_hand_with_a_soft_weight():
    """Loss = CE(labeled) + sum_i w_i CE(strong_i, argmax weak_i) / B_u, w from the batch's own mean and variance."""
    algo = create_algorithm("softmatch", 2, 3, momentum=0.0, uniform_alignment=False)
    batch = make_batch(requires_grad=True)
    out = algo.step(Echo(), batch, ctx())
    conf = [softmax_max(row) for row in U_W]  # 0.982, 0.622, 0.993
    mu = sum(conf) / 3
    var = sum((c - mu) ** 2 for c in conf) / 2  # unbiased
    w = [math.exp(-(min(c - mu, 0.0) ** 2) / (2 * var / 2.0**2)) for c in conf]
    assert w[0] == 1.0 and w[2] == 1.0 and 0 < w[1] < 1  # only the row under the mean confidence is decayed
    assert out.pseudo[1].tolist() == pytest.approx(w, rel=1e-5)
    pseudo = [0, 1, 1]
    loss_u = sum(w[i] * ce(U_S[i], pseudo[i]) for i in range(3)) / 3
    assert out.loss.item() == pytest.approx(LOSS_L + loss_u, rel=1e-6)
    # d CE(z, y) / dz = softmax(z) - onehot(y); each row's gradient is scaled by its weight and 1 / B_u.
    out.loss.backward()
    for i in range(3):
        z = [math.exp(v) for v in U_S[i]]
        expected = [w[i] / 3 * (z[c] / sum(z) - (c == pseudo[i])) for c in range(2)]
        assert batch.unlabeled["strong"].grad[i].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_supervised_gradients_reach_the_model_only():
    batch = make_batch(requires_grad=True)
    model = Echo()
    out = create_algorithm("supervised", 2).step(model, batch, ctx())
    out.loss.backward()
    assert batch.unlabeled["weak"].grad is None and batch.unlabeled["strong"].grad is None
    # d/ds mean_i CE(s * x_i, y_i) = mean_i x_i . (softmax(s x_i) - onehot(y_i)) at s = 1
    expected = 0.0
    for x, y in zip(X_L, Y_L, strict=True):
        z = [math.exp(v) for v in x]
        expected += sum(x[c] * (z[c] / sum(z) - (c == y)) for c in range(2)) / 2
    assert model.scale.grad.item() == pytest.approx(expected, rel=1e-6)


def test_pseudo_label_ramps_up_and_trains_the_same_view():
    algo = create_algorithm("pseudo_label", 2, 3, warmup=0.5)
    batch = make_batch(requires_grad=True)
    start = algo.step(Echo(), batch, ctx(step=0))
    assert start.loss.item() == pytest.approx(LOSS_L, rel=1e-6)  # weight 0 at the start
    mid = algo.step(Echo(), make_batch(), ctx(step=25))  # ramp half-way: weight 0.5
    loss_u = (ce(U_W[0], 0) + ce(U_W[2], 1)) / 3
    assert mid.loss.item() == pytest.approx(LOSS_L + 0.5 * loss_u, rel=1e-6)
    late = algo.step(Echo(), batch, ctx(step=80))
    late.loss.backward()
    assert batch.unlabeled["weak"].grad[0].abs().sum() > 0
    assert batch.unlabeled["weak"].grad[1].abs().sum() == 0


def test_flexmatch_starts_with_zero_thresholds_then_follows_its_memory():
    algo = create_algorithm("flexmatch", 2, 3)
    first = algo.step(Echo(), make_batch(), ctx())
    # All samples unused -> beta = 0 -> threshold M(0) * 0.95 = 0: every pseudo-label counts at first.
    assert first.pseudo[1].tolist() == [1.0, 1.0, 1.0]
    loss_u = (ce(U_S[0], 0) + ce(U_S[1], 1) + ce(U_S[2], 1)) / 3
    assert first.loss.item() == pytest.approx(LOSS_L + loss_u, rel=1e-6)
    # Memory now: sample 0 -> class 0, sample 2 -> class 1, sample 1 unused. Counts 1, 1, unused 1 -> beta = 1.
    assert algo.mask_fn.selected.tolist() == [0, -1, 1]
    assert algo.mask_fn.class_beta().tolist() == [1.0, 1.0]
    second = algo.step(Echo(), make_batch(), ctx(step=1))
    assert second.pseudo[1].tolist() == [1.0, 0.0, 1.0]  # thresholds back at 0.95 * M(1) = 0.95


def test_flexmatch_curriculum_mapping_by_hand():
    thr = CurriculumThreshold(num_unlabeled=10, num_classes=2, threshold=0.9, warmup=True)
    thr.selected[:2] = 0  # class 0: 2, class 1: 0, unused: 8
    beta = thr.class_beta()
    assert beta.tolist() == pytest.approx([2 / 8, 0.0])
    probs = torch.tensor([[0.2, 0.8], [0.85, 0.15]])
    # class 0 threshold = 0.9 * 0.25 / 1.75 = 0.1286; class 1 threshold = 0
    mask = thr(probs, index=torch.tensor([5, 6]))
    assert mask.tolist() == [1.0, 1.0]
    no_warm = CurriculumThreshold(num_unlabeled=10, num_classes=2, threshold=0.9, warmup=False)
    no_warm.selected[:2] = 0
    assert no_warm.class_beta().tolist() == [1.0, 0.0]
    # beta 0.8 separates the mapping M(x) = x / (2 - x) (threshold 0.6) from a linear beta * tau (0.72) and
    # tau / (2 - beta) (0.75): 0.65 passes and 0.58 fails only under the right one.
    thr = CurriculumThreshold(num_unlabeled=10, num_classes=2, threshold=0.9, warmup=True)
    thr.selected[:4], thr.selected[4] = 0, 1  # class 0: 4, class 1: 1, unused: 5 -> beta = [0.8, 0.2]
    assert thr.class_beta().tolist() == pytest.approx([0.8, 0.2])
    probs = torch.tensor([[0.65, 0.35], [0.58, 0.42], [0.45, 0.55]])
    # class 1 threshold = 0.9 * 0.2 / 1.8 = 0.1
    assert thr(probs, index=torch.tensor([7, 8, 9])).tolist() == [1.0, 0.0, 1.0]


def test_freematch_thresholds_by_hand():
    thr = SelfAdaptiveThreshold(num_classes=2, momentum=0.9)
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    mask = thr(probs)
    tau = 0.9 * 0.5 + 0.1 * (0.9 + 0.7 + 0.6) / 3
    p = [0.9 * 0.5 + 0.1 * 0.6, 0.9 * 0.5 + 0.1 * 0.4]
    tau_c = [p[0] / max(p) * tau, p[1] / max(p) * tau]
    assert thr.global_threshold.item() == pytest.approx(tau, rel=1e-6)
    assert thr.class_thresholds().tolist() == pytest.approx(tau_c, rel=1e-6)
    expected = [float(tau_c[0] <= 0.9), float(tau_c[1] <= 0.7), float(tau_c[0] <= 0.6)]
    assert mask.tolist() == expected
    hist = [0.9 * 0.5 + 0.1 * 2 / 3, 0.9 * 0.5 + 0.1 / 3]
    assert thr.label_hist.tolist() == pytest.approx(hist, rel=1e-6)


def test_freematch_initial_threshold_is_one_over_c():
    thr = SelfAdaptiveThreshold(num_classes=4)
    assert thr.class_thresholds().tolist() == pytest.approx([0.25] * 4)


def test_freematch_fairness_loss_by_hand_and_sign():
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], requires_grad=True)
    mask = torch.tensor([1.0, 1.0, 0.0])
    class_probs, label_hist = torch.tensor([0.6, 0.4]), torch.tensor([0.5, 0.5])
    loss = fairness_loss(logits, mask, class_probs, label_hist)
    probs = torch.tensor(
        [[math.e / (math.e + 1), 1 / (math.e + 1)], [1 / (1 + math.e**2), math.e**2 / (1 + math.e**2)]]
    )
    hist_s = torch.tensor([0.5, 0.5])  # one argmax per class among the kept rows
    target = class_probs / label_hist
    target = target / target.sum()
    mean_s = probs.mean(0) / hist_s
    mean_s = mean_s / mean_s.sum()
    expected = (target * torch.log(mean_s)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.item() < 0  # a negative cross-entropy: minimising it spreads the predictions
    loss.backward()
    assert logits.grad[2].abs().sum() == 0 and logits.grad[0].abs().sum() > 0


def test_softmatch_weight_by_hand():
    weight_fn = TruncatedGaussianWeight(num_classes=2, momentum=0.0, n_sigma=2.0, align=False)
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
    w = weight_fn(probs)
    conf = torch.tensor([0.9, 0.6, 0.7])
    mu, var = conf.mean().item(), conf.var(unbiased=True).item()
    expected = [
        1.0,
        math.exp(-((0.6 - mu) ** 2) / (2 * var / 4)),
        math.exp(-((0.7 - mu) ** 2) / (2 * var / 4)),
    ]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)


def test_softmatch_alignment_shapes_weights_not_pseudo_labels():
    algo = create_algorithm("softmatch", 2, 3)
    out = algo.step(Echo(), make_batch(), ctx())
    assert out.pseudo[0].tolist() == [0, 1, 1]  # from the unaligned predictions
    assert torch.all(out.pseudo[1] > 0) and torch.all(out.pseudo[1] <= 1)
    # At the start mu = 1/C, so every sample above chance confidence has weight 1.
    assert out.pseudo[1].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_softmatch_weight_ema_starts_from_one_over_c_and_one():
    weight_fn = TruncatedGaussianWeight(num_classes=4, momentum=0.9, n_sigma=2.0, align=False)
    probs = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]])
    w = weight_fn(probs)
    conf = [0.7, 0.4, 0.25]
    batch_mean = sum(conf) / 3
    batch_var = sum((c - batch_mean) ** 2 for c in conf) / 2
    mu, var = 0.9 * 0.25 + 0.1 * batch_mean, 0.9 * 1.0 + 0.1 * batch_var
    assert weight_fn.mean.item() == pytest.approx(mu, rel=1e-6)
    assert weight_fn.var.item() == pytest.approx(var, rel=1e-6)
    expected = [math.exp(-(min(c - mu, 0.0) ** 2) / (2 * var / 4)) for c in conf]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)
    assert expected[0] == 1.0 and expected[2] < 1.0


def test_softmatch_uniform_alignment_by_hand():
    weight_fn = TruncatedGaussianWeight(num_classes=3, momentum=0.9, n_sigma=2.0, align=True)
    rows = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]
    w = weight_fn(torch.tensor(rows))
    # First call: E[p] is the batch mean; aligned p = SumNorm(p / E[p]).
    mean_p = [sum(r[c] for r in rows) / 3 for c in range(3)]
    aligned = [[r[c] / mean_p[c] for c in range(3)] for r in rows]
    aligned = [[v / sum(a) for v in a] for a in aligned]
    assert max(range(3), key=lambda c: aligned[2][c]) == 2  # alignment flips the third row's argmax (1 -> 2)
    conf = [max(a) for a in aligned]
    batch_mean = sum(conf) / 3
    batch_var = sum((c - batch_mean) ** 2 for c in conf) / 2
    mu, var = 0.9 / 3 + 0.1 * batch_mean, 0.9 + 0.1 * batch_var
    expected = [math.exp(-(min(c - mu, 0.0) ** 2) / (2 * var / 4)) for c in conf]
    assert w.tolist() == pytest.approx(expected, rel=1e-5)
    # Second call: E[p] is an EMA of the batch means.
    weight_fn(torch.tensor([[1 / 3, 1 / 3, 1 / 3]] * 3))
    assert weight_fn.class_probs.tolist() == pytest.approx([0.9 * m + 0.1 / 3 for m in mean_p], rel=1e-6)


def test_softmatch_pseudo_labels_come_from_unaligned_predictions():
    algo = create_algorithm("softmatch", 3, 3)
    rows = [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]
    weak = torch.tensor(rows).log()  # Echo: the softmax of these logits is `rows`
    batch = Batch(
        labeled=BatchPart({"weak": torch.tensor([[2.0, 0.0, 0.0]])}, y=torch.tensor([0])),
        unlabeled=BatchPart({"weak": weak, "strong": torch.zeros(3, 3)}, index=torch.arange(3)),
    )
    out = algo.step(Echo(), batch, StepContext(step=0, total_steps=10, num_classes=3))
    assert out.pseudo[0].tolist() == [0, 0, 1]  # aligned, the last row would be class 2


def test_freematch_step_is_labeled_plus_unlabeled_plus_fairness_by_hand():
    algo = create_algorithm("freematch", 2, 3)  # momentum 0.999, lambda_u 1, lambda_fair 0.01
    u_s = [[1.0, 0.0], [0.0, 2.0], [0.0, 1.0]]  # strong-view argmax 0, 1, 1: no ties
    batch = Batch(
        labeled=BatchPart({"weak": torch.tensor(X_L)}, y=torch.tensor(Y_L)),
        unlabeled=BatchPart({"weak": torch.tensor(U_W), "strong": torch.tensor(u_s)}, index=torch.arange(3)),
    )
    out = algo.step(Echo(), batch, ctx())
    weak = [[math.exp(v) / sum(math.exp(u) for u in r) for v in r] for r in U_W]
    conf = [max(r) for r in weak]
    tau = 0.999 * 0.5 + 0.001 * sum(conf) / 3
    p = [0.999 * 0.5 + 0.001 * sum(r[c] for r in weak) / 3 for c in range(2)]
    h = [0.999 * 0.5 + 0.001 * 1 / 3, 0.999 * 0.5 + 0.001 * 2 / 3]  # weak argmax 0, 1, 1
    thresholds = [p[c] / max(p) * tau for c in range(2)]
    pseudo = [0, 1, 1]
    mask = [float(conf[i] >= thresholds[pseudo[i]]) for i in range(3)]
    assert mask == [1.0, 1.0, 1.0] and out.pseudo[1].tolist() == mask
    loss_u = sum(ce(u_s[i], pseudo[i]) for i in range(3)) / 3
    strong = [[math.exp(v) / sum(math.exp(u) for u in r) for v in r] for r in u_s]
    target = [p[c] / h[c] for c in range(2)]
    target = [t / sum(target) for t in target]
    hist_s = [1 / 3, 2 / 3]
    mean_s = [sum(r[c] for r in strong) / 3 / hist_s[c] for c in range(2)]
    mean_s = [m / sum(mean_s) for m in mean_s]
    fair = sum(t * math.log(m) for t, m in zip(target, mean_s, strict=True))
    assert out.logs["loss_fair"].item() == pytest.approx(fair, rel=1e-5)
    assert out.loss.item() == pytest.approx(LOSS_L + loss_u + 0.01 * fair, rel=1e-6)


@pytest.mark.parametrize("name", ["fixmatch", "flexmatch", "freematch", "softmatch", "pseudo_label"])
def test_state_round_trip_continues_identically(name):
    torch.manual_seed(0)
    a = create_algorithm(name, 2, 3)
    for step in range(3):
        a.step(Echo(), make_batch(), ctx(step=step))
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(a.state_dict(), "algo", tensors)  # the way checkpoints store it
    b = create_algorithm(name, 2, 3)
    b.load_state_dict(unflatten(tree, {k: v.clone() for k, v in tensors.items()}))
    batch = make_batch()
    out_a, out_b = a.step(Echo(), batch, ctx(step=3)), b.step(Echo(), batch, ctx(step=3))
    assert out_a.loss.item() == out_b.loss.item()
    assert torch.equal(out_a.pseudo[1], out_b.pseudo[1])
    for key, value in a.state_dict().items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(b.state_dict()[key]))
    if name in ("fixmatch", "pseudo_label"):  # fixed thresholds: nothing to save, and nothing else is accepted
        assert a.state_dict() == {}
        with pytest.raises(ValueError, match="keeps no state"):
            b.load_state_dict({"thresholds": torch.zeros(2)})  # e.g. a FlexMatch checkpoint
    else:
        assert a.state_dict()  # the adaptive methods carry their statistics in checkpoints


@pytest.mark.parametrize("name", ["flexmatch", "freematch", "softmatch"])
def test_adaptive_state_changes_with_training(name):
    a = create_algorithm(name, 2, 3)
    before = {k: torch.as_tensor(v).clone() for k, v in a.state_dict().items()}
    a.step(Echo(), make_batch(), ctx())
    after = a.state_dict()
    assert any(not torch.equal(before[k], torch.as_tensor(after[k])) for k in before)


def test_flexmatch_rejects_state_of_another_pool_size():
    a, b = create_algorithm("flexmatch", 2, 3), create_algorithm("flexmatch", 2, 5)
    with pytest.raises(ConfigError, match="new --out"):
        b.load_state_dict(a.state_dict())


@pytest.mark.parametrize("name", ["fixmatch", "flexmatch", "freematch", "softmatch"])
def test_concat_forward_gives_the_same_loss_without_batchnorm(name):
    # With a batch-independent model the two forward conventions agree exactly; they differ only through
    # BatchNorm statistics.
    separate = create_algorithm(name, 2, 3).step(Echo(), make_batch(), ctx())
    joint = create_algorithm(name, 2, 3, concat_forward=True).step(Echo(), make_batch(), ctx())
    assert joint.loss.item() == pytest.approx(separate.loss.item(), rel=1e-6)


def test_concat_forward_shares_batchnorm_statistics():
    model = nn.Sequential(nn.BatchNorm1d(2, affine=False))
    create_algorithm("fixmatch", 2, 3, concat_forward=True).step(model, make_batch(), ctx())
    assert model[0].num_batches_tracked.item() == 1  # one pass over labeled, weak and strong
    model = nn.Sequential(nn.BatchNorm1d(2, affine=False))
    create_algorithm("fixmatch", 2, 3).step(model, make_batch(), ctx())
    assert model[0].num_batches_tracked.item() == 2  # a no-grad weak pass, then labeled + strong
