"""Tests for the model registry: shapes, gradients, normalisation, memory formats, errors, downloads."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from fewlabels.errors import ConfigError, DataError
from fewlabels.models import MODELS, Classifier, create_model, describe_models, list_models

# Too slow on 2 CPU cores for the full battery: built and run forward only, on 2 images of 32x32.
HEAVY = {"wrn28_8"}
IMAGE_ONLY = {"cnn", "resnet18", "wrn28_2", "wrn28_8"}
# Sizes each model is meant for; 8x8 (sklearn digits) only for the small CPU models.
SIZES = {"cnn": (8, 28, 32), "mlp": (8, 28, 32)}
DEFAULT_SIZES = (28, 32)


def _cases() -> list[tuple[str, tuple[int, ...]]]:
    cases = []
    for name in list_models():
        if name in HEAVY:
            continue
        for size in SIZES.get(name, DEFAULT_SIZES):
            for c in (1, 3):
                cases.append((name, (c, size, size)))
    cases.append(("mlp", (20,)))
    return cases


CASES = _cases()
IDS = [f"{n}-{'x'.join(map(str, s))}" for n, s in CASES]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize(("name", "shape"), CASES, ids=IDS)
def test_forward_features_and_gradients(name: str, shape: tuple[int, ...]) -> None:
    model = create_model(name, 7, shape)
    assert isinstance(model, Classifier)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    x = torch.rand(4, *shape)
    logits = model(x)
    assert logits.shape == (4, 7)
    assert torch.isfinite(logits).all()
    feats = model.features(x)
    assert feats.shape == (4, model.num_features) == (4, model.classifier.in_features)
    # Random weights: a plain sum gives every sample the same upstream gradient, which train-mode BatchNorm
    # cancels exactly, hiding whether a branch is really dead.
    (logits * torch.randn_like(logits)).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not dead, f"parameters without gradient: {dead}"


IMAGE_CASES = [(n, s) for n, s in CASES if len(s) == 3]  # vectors have no memory format to change


@pytest.mark.parametrize(("name", "shape"), IMAGE_CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in IMAGE_CASES])
def test_channels_last_matches_contiguous(name: str, shape: tuple[int, ...]) -> None:
    model = create_model(name, 5, shape, mean=[0.5] * shape[0], std=[0.25] * shape[0]).eval()
    x = torch.rand(3, *shape)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list_models())
def test_normalisation_is_a_saved_buffer(name: str) -> None:
    shape = (20,) if name not in IMAGE_ONLY else (3, 8, 8)
    n = shape[0]
    model = create_model(name, 3, shape, mean=[0.1 * i for i in range(n)], std=[0.5] * n)
    params = dict(model.named_parameters())
    state = model.state_dict()
    assert "normalize.mean" not in params and "normalize.std" not in params
    assert torch.allclose(state["normalize.mean"], torch.tensor([0.1 * i for i in range(n)]))
    assert torch.allclose(state["normalize.std"], torch.full((n,), 0.5))


def test_normalisation_values_and_identity() -> None:
    model = create_model("cnn", 4, (3, 8, 8), mean=(0.5, 0.4, 0.3), std=(0.1, 0.2, 0.5))
    x = torch.rand(2, 3, 8, 8)
    expected = (x - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.1, 0.2, 0.5]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), expected)
    # One value broadcasts over channels; None is the identity.
    assert model.normalize.mean.shape == (3,)
    torch.testing.assert_close(create_model("cnn", 4, (3, 8, 8), mean=[0.5]).normalize.mean, torch.full((3,), 0.5))
    torch.testing.assert_close(create_model("cnn", 4, (3, 8, 8)).normalize(x), x)
    vec = create_model("mlp", 4, (5,), mean=[1.0] * 5, std=[2.0] * 5)
    v = torch.rand(3, 5)
    torch.testing.assert_close(vec.normalize(v), (v - 1.0) / 2.0)


def test_state_dict_restores_normalisation() -> None:
    trained = create_model("mlp", 3, (4,), mean=[1, 2, 3, 4], std=[2, 2, 2, 2])
    fresh = create_model("mlp", 3, (4,))
    fresh.load_state_dict(trained.state_dict())
    x = torch.rand(5, 4)
    torch.testing.assert_close(fresh.eval()(x), trained.eval()(x))


def test_wrn28_2_parameter_count() -> None:
    # FixMatch's WRN-28-2 with 10 classes on RGB: 1,467,610 parameters (as in kekmodel/FixMatch-pytorch).
    model = create_model("wrn28_2", 10, (3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == 1_467_610
    # Grey input only shrinks the stem: 16 * 9 * 2 fewer weights.
    grey = create_model("wrn28_2", 10, (1, 32, 32))
    assert sum(p.numel() for p in grey.parameters()) == 1_467_610 - 16 * 9 * 2


def test_wrn28_8_builds_and_runs() -> None:
    model = create_model("wrn28_8", 10, (3, 32, 32))
    assert sum(p.numel() for p in model.parameters()) == 23_354_842
    assert model.num_features == 512
    with torch.no_grad():
        out = model.eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_wrn_initialisation_follows_fixmatch() -> None:
    model = create_model("wrn28_2", 10, (3, 32, 32))
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.momentum == 0.001 for m in bns)
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in bns)
    assert bool((model.classifier.bias == 0).all())
    acts = [m for m in model.modules() if isinstance(m, nn.LeakyReLU)]
    assert acts and all(m.negative_slope == 0.1 for m in acts)


def test_cnn_is_small() -> None:
    for shape in [(1, 28, 28), (3, 32, 32)]:
        assert sum(p.numel() for p in create_model("cnn", 10, shape).parameters()) < 500_000


def test_resnet18_stems() -> None:
    small = create_model("resnet18", 10, (1, 32, 32))
    assert small.backbone.conv1.kernel_size == (3, 3) and small.backbone.conv1.stride == (1, 1)
    assert small.backbone.conv1.in_channels == 1
    assert isinstance(small.backbone.maxpool, nn.Identity)
    large = create_model("resnet18", 10, (1, 96, 96))
    assert large.backbone.conv1.kernel_size == (7, 7) and large.backbone.conv1.in_channels == 1
    assert isinstance(large.backbone.maxpool, nn.MaxPool2d)
    assert large(torch.rand(2, 1, 96, 96)).shape == (2, 10)


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("attempted to download weights")


def test_no_download_without_pretrained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_download)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", _no_download)
    for name in list_models():
        if name not in HEAVY:
            create_model(name, 10, (3, 32, 32))


def test_pretrained_resnet18_loads_imagenet_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for the download: a recognisable ImageNet-shaped state_dict.
    fake = torchvision.models.resnet18(weights=None).state_dict()
    fake["conv1.weight"] = torch.randn_like(fake["conv1.weight"])
    calls = []

    def load(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        calls.append(url)
        return fake

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", load)
    rgb = create_model("resnet18", 4, (3, 32, 32), pretrained=True)
    assert len(calls) == 1
    # The ImageNet stem is kept even for small images, since the kernels were trained with it.
    torch.testing.assert_close(rgb.backbone.conv1.weight, fake["conv1.weight"])
    assert isinstance(rgb.backbone.maxpool, nn.MaxPool2d)
    assert rgb.classifier.out_features == 4
    torch.testing.assert_close(rgb.normalize.mean, torch.tensor([0.485, 0.456, 0.406]))
    grey = create_model("resnet18", 4, (1, 32, 32), pretrained=True)
    torch.testing.assert_close(grey.backbone.conv1.weight, fake["conv1.weight"].sum(1, keepdim=True))
    assert grey(torch.rand(2, 1, 32, 32)).shape == (2, 4)


def test_pretrained_refused_where_there_are_no_weights() -> None:
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("cnn", 10, (1, 28, 28), pretrained=True)


@pytest.mark.parametrize(("bad", "suggestion"), [("cnnn", "'cnn'"), ("wrn28_3", "'wrn28_2'"), ("resnet19", "resnet18")])
def test_unknown_name_suggests_close_match(bad: str, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=suggestion):
        create_model(bad, 10, (1, 28, 28))


def test_name_spelling_variants_resolve() -> None:
    model = create_model("WRN28-2", 10, (3, 8, 8))
    assert model.name == "wrn28_2"


@pytest.mark.parametrize("name", sorted(IMAGE_ONLY))
def test_image_model_refuses_vectors(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"{name}.*'mlp'"):
        create_model(name, 10, (64,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"input_shape": (28, 28)}, r"input_shape must be \(C, H, W\).*got \(28, 28\)"),
        ({"input_shape": (1, 0, 28)}, r"positive integer sizes; got \(1, 0, 28\)"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"mean": [0.1, 0.2]}, "mean has 2 values but the input has 1 channels"),
        ({"std": [0.0]}, "std must be positive"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"name": "cnn", "num_classes": 10, "input_shape": (1, 28, 28)} | kwargs
    with pytest.raises(ConfigError, match=message):
        create_model(**args)  # type: ignore[arg-type]


def test_wrong_input_shape_is_reported() -> None:
    model = create_model("cnn", 10, (1, 28, 28))
    with pytest.raises(DataError, match="input shape"):
        model(torch.rand(2, 3, 28, 28))


def test_dropout() -> None:
    model = create_model("mlp", 10, (16,), dropout=0.5)
    x = torch.rand(8, 16)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    # p=0 leaves train-mode forwards deterministic.
    plain = create_model("mlp", 10, (16,)).train()
    torch.testing.assert_close(plain(x), plain(x))


def test_listing() -> None:
    assert list_models() == sorted(["cnn", "mlp", "resnet18", "wrn28_2", "wrn28_8"])
    described = describe_models()
    assert [n for n, _ in described] == list_models()
    assert all(desc and "\n" not in desc for _, desc in described)
    assert len(MODELS) == len(list_models())


# Stochastic depth (`drop_path`): residual models only.
RESIDUAL = ["resnet18", "wrn28_2"]  # wrn28_8 shares wrn28_2's code and is too slow to run here


def _stochastic_depth_modules(model: nn.Module) -> list[torchvision.ops.StochasticDepth]:
    return [m for m in model.modules() if isinstance(m, torchvision.ops.StochasticDepth)]


def _train_with_frozen_bn(model: nn.Module) -> nn.Module:
    """Train mode except BatchNorm, so that stochastic depth is the only source of train/eval differences."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def test_survival_probabilities_decay_linearly() -> None:
    from fewlabels.models.base import drop_path_rates, survival_probabilities

    for blocks in (1, 8, 12):
        survival = survival_probabilities(blocks, 0.2)
        assert len(survival) == blocks
        # Huang et al.: p_l = 1 - (l / L) * (1 - p_L) with p_L = 0.8.
        expected = [1 - (layer / blocks) * (1 - 0.8) for layer in range(1, blocks + 1)]
        assert survival == pytest.approx(expected)
        assert survival[-1] == pytest.approx(0.8) and drop_path_rates(blocks, 0.2)[-1] == 0.2
        assert survival[0] == pytest.approx(1 - 0.2 / blocks)
        steps = [a - b for a, b in zip(survival, survival[1:], strict=False)]
        assert steps == pytest.approx([0.2 / blocks] * (blocks - 1))
    assert survival_probabilities(12, 0.0) == [1.0] * 12
    # The blocks of the built models get exactly these rates, input to output.
    wrn = create_model("wrn28_2", 10, (3, 8, 8), drop_path=0.2)
    assert [m.p for m in _stochastic_depth_modules(wrn)] == drop_path_rates(12, 0.2)
    res = create_model("resnet18", 10, (3, 8, 8), drop_path=0.2)
    assert [m.p for m in _stochastic_depth_modules(res)] == drop_path_rates(8, 0.2)
    assert all(m.mode == "row" for m in _stochastic_depth_modules(res))
    assert not _stochastic_depth_modules(create_model("resnet18", 10, (3, 8, 8)))


@pytest.mark.parametrize("name", RESIDUAL)
def test_drop_path_keeps_weights_and_eval_output(name: str) -> None:
    plain = create_model(name, 5, (3, 16, 16))
    noisy = create_model(name, 5, (3, 16, 16), drop_path=0.5)
    assert list(noisy.state_dict()) == list(plain.state_dict())
    assert sum(p.numel() for p in noisy.parameters()) == sum(p.numel() for p in plain.parameters())
    noisy.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(noisy.eval()(x), plain.eval()(x))
    # And back: a model trained with stochastic depth loads into one without it.
    plain.load_state_dict(noisy.state_dict())


@pytest.mark.parametrize("name", RESIDUAL)
def test_drop_path_is_random_in_training_only(name: str) -> None:
    x = torch.rand(2, 3, 8, 8)
    noisy = _train_with_frozen_bn(create_model(name, 5, (3, 8, 8), drop_path=0.5))
    plain = _train_with_frozen_bn(create_model(name, 5, (3, 8, 8), drop_path=0.0))
    with torch.no_grad():
        assert not torch.allclose(noisy(x), noisy(x))
        torch.testing.assert_close(plain(x), plain(x))
        # The same seed gives the same drops.
        torch.manual_seed(1)
        first = noisy(x)
        torch.manual_seed(1)
        torch.testing.assert_close(noisy(x), first)


@pytest.mark.parametrize("name", RESIDUAL)
def test_drop_path_drops_each_sample_independently(name: str) -> None:
    model = _train_with_frozen_bn(create_model(name, 5, (3, 16, 16), drop_path=0.5))
    last = _stochastic_depth_modules(model)[-1]
    assert last.p == 0.5
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    last.register_forward_hook(lambda _m, inputs, output: seen.append((inputs[0], output)))
    with torch.no_grad():
        model(torch.rand(16, 3, 16, 16))
    (branch,), (out,) = [b for b, _ in seen], [o for _, o in seen]
    dropped = [i for i in range(16) if not out[i].any()]
    kept = [i for i in range(16) if i not in dropped]
    # Per sample, not per batch: some branches are dropped and the others are scaled by 1 / survival.
    assert dropped and kept
    torch.testing.assert_close(out[kept], branch[kept] / 0.5)
    assert branch[dropped].abs().sum() > 0


def test_drop_path_drops_branches_in_training_only_and_every_weight_learns() -> None:
    model = create_model("resnet18", 5, (3, 8, 8), drop_path=0.3)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), model(x))  # off at evaluation
        model.train()
        assert not torch.allclose(model(x), model(x))  # random residual drops: the same batch, other outputs
    for _ in range(3):  # a branch dropped in one batch still learns over several
        logits = model(torch.rand(4, 3, 8, 8))
        (logits * torch.randn_like(logits)).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"parameters without gradient: {dead}"


def test_drop_path_with_pretrained_resnet18(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = torchvision.models.resnet18(weights=None).state_dict()
    fake["layer4.1.conv2.weight"] = torch.randn_like(fake["layer4.1.conv2.weight"])
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: fake)
    model = create_model("resnet18", 4, (3, 32, 32), pretrained=True, drop_path=0.2)
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight, fake["layer4.1.conv2.weight"])
    assert model.backbone.layer4[1].drop_path.p == 0.2
    assert model.options == {"drop_path": 0.2, "stem": "imagenet"}


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_drop_path_needs_a_residual_model(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"'drop_path' is not an option of model '{name}'.*residual model.*wrn28_2"):
        create_model(name, 10, (1, 16, 16), drop_path=0.2)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.2", True, None])
def test_drop_path_out_of_range(value: object) -> None:
    with pytest.raises(ConfigError, match=r"drop_path .*\[0, 1\)"):
        create_model("wrn28_2", 10, (3, 8, 8), drop_path=value)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        create_model("resnet18", 10, (3, 8, 8), drop_path=value)


def test_drop_path_survives_the_model_json_round_trip() -> None:
    import json

    model = create_model("WRN28-2", 3, (3, 8, 8), drop_path=0.2)
    assert model.name == "wrn28_2" and model.options == {"drop_path": 0.2}
    info = json.loads(json.dumps({"model": model.name, "options": model.options}))
    rebuilt = create_model(info["model"], 3, (3, 8, 8), **info["options"])
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.options == model.options
    assert [m.p for m in _stochastic_depth_modules(rebuilt)] == [m.p for m in _stochastic_depth_modules(model)]
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model.eval()(x))


def test_options_do_not_rename_the_model() -> None:
    # The option loop once reused the variable holding the model's name.
    assert create_model("resnet18", 10, (3, 8, 8), stem="cifar", drop_path=0.1).name == "resnet18"
    assert create_model("mlp", 10, (4,), norm="layer").name == "mlp"
