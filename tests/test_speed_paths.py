"""Speed paths that must not change results: attacks touch no weight gradients, and
``fit(compile=...)`` trains the model eager fit trains (or falls back to eager)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import nbs_lib.methods.train.loop as train_module
import nbs_lib.methods.train.recipes as recipes
from nbs_lib.methods.attacks import pgd
from nbs_lib.methods.train.config import TrainConfig
from nbs_lib.methods.train.loop import fit
from nbs_lib.models.split import FeatureExtractor, Normalize, SplitClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


def _block(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def tiny_model(seed: int = 0) -> SplitClassifier:
    """A SplitClassifier small enough to compile in seconds (8x8 inputs, 3 classes)."""
    torch.manual_seed(seed)
    stages = [_block(8, 8), nn.MaxPool2d(2), _block(8, 16), nn.Identity()]
    features = FeatureExtractor(Normalize((0.5,) * 3, (0.25,) * 3), _block(3, 8), stages)
    return SplitClassifier(features, 16, 3, arch="tiny")


class Blobs:
    """Three classes of 8x8 images of different brightness."""

    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 3
        base = self.labels.float().view(-1, 1, 1, 1) * 0.3 + 0.2
        self.images = (base + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)

    def __len__(self):
        return len(self.labels)


CONFIG = TrainConfig("standard", epochs=2, batch_size=10, lr_f=0.0, lr_g=1e-2, augment="crop")


def _fit(**kwargs) -> tuple[dict, list[dict]]:
    model = tiny_model()
    history = fit(model, Blobs(), CONFIG, val=Blobs(6), device="cpu", progress=False, **kwargs)
    return model.state_dict(), history


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


# --------------------------------------------------------------------------- attacks


def test_pgd_takes_gradients_with_respect_to_the_input_only():
    model = tiny_model()
    model.train()  # as inside adversarial training
    model.classifier[1].weight.requires_grad_(False)  # a mix of frozen and trainable weights
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    data = Blobs(8)

    x_adv = pgd(model, data.images, data.labels, 8 / 255, steps=3)

    assert (x_adv - data.images).abs().max() > 0  # the attack did take steps
    for name, p in model.named_parameters():
        assert p.grad is None, f"{name} got a gradient from the attack"
        assert p.requires_grad == flags[name], f"{name}: requires_grad not restored"
    assert {n: m.training for n, m in model.named_modules()} == modes
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), f"{k} changed (BatchNorm statistics must not move)"


# --------------------------------------------------------------------------- torch.compile


def test_compiled_fit_trains_the_eager_model():
    """Dynamo and AOT autograd (backend 'aot_eager', fast to compile) against eager."""
    eager, h_eager = _fit()
    compiled, h_compiled = _fit(compile="aot_eager")
    assert _max_diff(eager, compiled) < 1e-5
    assert [r["val_acc"] for r in h_eager] == [r["val_acc"] for r in h_compiled]


@pytest.mark.slow
def test_inductor_fit_agrees_with_eager():
    """``compile=True`` (inductor, C++ kernels on the CPU): ~15 s of compilation."""
    if train_module._compile_problem("cpu", train_module.COMPILE_BACKEND) is not None:
        pytest.skip("torch.compile's inductor backend does not work on this machine")
    eager, h_eager = _fit()
    compiled, h_compiled = _fit(compile=True)
    assert _max_diff(eager, compiled) < 1e-4
    for a, b in zip(h_eager, h_compiled, strict=True):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4


def test_a_backend_that_cannot_compile_falls_back_to_eager(monkeypatch):
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(train_module, "COMPILE_BACKEND", broken_backend)
    eager, h_eager = _fit()
    with pytest.warns(RuntimeWarning, match="falls back to eager"):
        fallback, h_fallback = _fit(compile=True)
    assert _max_diff(eager, fallback) == 0.0 and h_eager == h_fallback


def test_compile_is_passed_through_and_stays_out_of_the_cache_key(monkeypatch):
    seen = []

    def fake(dataset, arch, weights, num_classes, train_set, val_set, config, profile, device,
             cache, progress, compile, epoch_data=None):
        seen.append((config, compile))
        return recipes.TrainedModel(None, {}, [], 50.0)

    monkeypatch.setattr(recipes, "_train_cached", fake)
    for flag in (False, True):
        recipes.train_model("digits", "full", "smoke", arch="resnet18", weights=None, lr_f=1e-4,
                                 lr_g=1e-3, device="cpu", progress=False, compile=flag)
    (config_off, off), (config_on, on) = seen
    assert (off, on) == (False, True)
    assert recipes.config_key(config_off) == recipes.config_key(config_on)


# ----------------------------------------------------------------------------------
# channels_last layout (issue 23): faster on the CPU, same numbers up to rounding
# ----------------------------------------------------------------------------------


def test_channels_last_converts_modules_and_image_batches_only():
    from nbs_lib.core.device import channels_last

    model = channels_last(tiny_model())
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    batch = channels_last(torch.rand(2, 3, 8, 8))
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    flat = torch.rand(2, 5)
    assert channels_last(flat) is flat


def test_attacks_run_channels_last_with_the_contiguous_gradient_and_put_the_layout_back():
    from nbs_lib.methods.attacks import _attack_layout, _logits_and_grad

    data = Blobs(12)
    reference = tiny_model().eval()
    x = data.images.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(reference(x), data.labels, reduction="sum")
    (expected,) = torch.autograd.grad(loss, x)
    model = tiny_model().eval()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    with _attack_layout(model) as view:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        _, grad = _logits_and_grad(view, data.images.clone().requires_grad_(True), data.labels,
                                   contextlib.nullcontext())
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)
    pgd(model, data.images, data.labels, 2 / 255, 2, stop_when_broken=True)
    assert conv.weight.is_contiguous()  # put back: a model trained later keeps its own layout


def test_a_model_in_training_mode_keeps_its_layout_under_attack():
    model = tiny_model().train()
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    seen = []
    conv.register_forward_pre_hook(lambda module, args: seen.append(module.weight.is_contiguous()))
    pgd(model, Blobs(6).images, Blobs(6).labels, 2 / 255, 1)
    assert seen and all(seen), "adversarial training's attack ran the model in another layout"
    assert conv.weight.is_contiguous() and model.training
