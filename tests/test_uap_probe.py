import pandas as pd
import pytest
import torch

from nbs_lib.core.profiles import get_profile
from nbs_lib.core.runs import RunCache
from nbs_lib.studies.ch03_uap import (
    class_template,
    gradient_maps,
    letter_uaps,
    random_sign_noise,
    semantic_alignment,
    source_uap,
    source_uap_transfer,
    success_along_training,
    uap_results,
    uap_table,
    uap_training_images,
)
from nbs_lib.studies.common import attack_sample, train_three


def test_semantic_alignment_sees_a_drawn_template():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(40, 3, 8, 8, generator=g)
    labels = torch.arange(40) % 2
    images[labels == 1, :, 2:6, 2:6] -= 0.5  # class 1 has a dark square
    template = class_template(images, labels, 1)
    drawn = torch.zeros(3, 8, 8)
    drawn[:, 2:6, 2:6] = -0.1
    assert semantic_alignment(drawn, template) > 0.8
    assert abs(semantic_alignment(torch.randn(3, 8, 8, generator=g), template)) < 0.3
    assert semantic_alignment(torch.zeros(3, 8, 8), template) == 0.0


def test_random_sign_noise_is_at_the_bound():
    noise = random_sign_noise((1, 3, 8, 8), 10.0)
    assert torch.allclose(noise.abs(), torch.full_like(noise, 10 / 255))


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory):
    cache = RunCache(tmp_path_factory.mktemp("cache"))
    prof = get_profile("smoke")
    models = train_three("digits", prof, regimes=("standard", "full"), device="cpu", cache=cache,
                         progress=False)
    return prof, cache, models


@pytest.mark.slow
def test_chapter_pipeline_on_smoke_models(smoke_models):
    prof, cache, models = smoke_models
    images, labels = uap_training_images("digits", prof, per_class=4)
    test_x, test_y, classes = attack_sample("digits", prof, 0)
    uaps = letter_uaps(models, images, [0, 1], steps=3, batch_size=8, ngf=8, device="cpu", cache=cache,
                       progress=False)
    assert set(uaps) == {(m, t) for m in models for t in (0, 1)}
    for uap in uaps.values():
        assert uap.delta.abs().max() <= 10 / 255 + 1e-6
    table = uap_table(models, uaps, test_x, test_y, classes, images, labels, device="cpu")
    assert table.success.between(0, 100).all() and table.alignment.between(-1, 1).all()
    grads = gradient_maps(models, images, labels, [0], device="cpu")
    assert grads[("full", 0)]["image"].shape == images.shape[1:]
    curve = success_along_training("digits", models["full"], uaps[("full", 0)], test_x, test_y, prof,
                                   every=1, device="cpu", cache=cache, progress=False)
    assert curve.step.tolist()[:2] == [0, 1] and curve.attrs["final_matches"]
    again = success_along_training("digits", models["full"], uaps[("full", 0)], test_x, test_y, prof,
                                   every=1, device="cpu", cache=cache, progress=False)
    pd.testing.assert_frame_equal(curve, again)
    source = source_uap(prof, prof.arch, target=1, n_images=16, steps=2, batch_size=8, ngf=8,
                        device="cpu", cache=cache, progress=False)
    transfer = source_uap_transfer({("digits", m): t for m, t in models.items()}, source, prof,
                                   device="cpu", progress=False)
    assert set(transfer.perturbation) == {"pre-trained UAP", "random sign noise"}
    long = uap_results(table, {"full": curve}, transfer, "digits")
    assert list(long.columns) == ["dataset", "model", "experiment", "value"] and len(long) > 10
