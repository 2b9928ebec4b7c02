import pytest
import torch

from nbs_lib.models.imagenet import photo
from nbs_lib.models.registry import available_architectures, load_model, model_info

LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
RESNETS = ["resnet18", "resnet50", "resnet101", "wide_resnet50_2", "wide_resnet101_2"]


@pytest.mark.parametrize("arch", LITES)
def test_lite_weights_are_imagenet_weights(arch):
    """chelsea is an Egyptian cat (285), coffee an espresso (967): real ImageNet weights."""
    model = load_model(arch, weights="imagenet").eval()
    with torch.no_grad():
        cat = model(photo("chelsea", 224)).softmax(-1)
        coffee = model(photo("coffee", 224)).softmax(-1)
    assert cat.argmax().item() == 285 and cat.max() > 0.3
    assert coffee.argmax().item() == 967 and coffee.max() > 0.3


def test_random_lite_is_not_imagenet():
    model = load_model("efficientnet_lite0", weights=None).eval()
    with torch.no_grad():
        p = model(photo("chelsea", 224)).softmax(-1)
    assert p.max() < 0.2


@pytest.mark.parametrize("arch", available_architectures())
def test_forward_and_feature_split(arch):
    model = load_model(arch, weights=None, num_classes=7).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = model(x)
        embedding = model.features(x)
        stages = model.features.stage_outputs(x)
        assert torch.allclose(model.classifier(embedding), logits, atol=1e-5)
    assert logits.shape == (2, 7)
    assert embedding.shape == (2, model.embedding_dim)
    assert len(stages) == 4
    sides = [s.shape[-1] for s in stages]
    assert sides == [16, 8, 4, 2], sides  # strides 4, 8, 16, 32
    assert stages[-1].shape[1] == model.embedding_dim


def test_inputs_are_normalised_inside_the_model():
    model = load_model("resnet18", num_classes=3)
    first = model.features.normalize
    x = torch.full((1, 3, 4, 4), 0.485)
    assert torch.allclose(first(x)[0, 0], torch.zeros(4, 4), atol=1e-6)


def test_fresh_head_is_seeded_and_pretrained_f_is_kept():
    a = load_model("efficientnet_lite0", weights="imagenet", num_classes=10, seed=1)
    b = load_model("efficientnet_lite0", weights="imagenet", num_classes=10, seed=1)
    c = load_model("efficientnet_lite0", weights="imagenet", num_classes=10, seed=2)
    assert torch.equal(a.classifier[1].weight, b.classifier[1].weight)
    assert not torch.equal(a.classifier[1].weight, c.classifier[1].weight)
    assert torch.equal(a.features.stem._conv_stem.weight, c.features.stem._conv_stem.weight)


def test_bn_momentum_is_set_everywhere():
    model = load_model("efficientnet_lite0", weights="imagenet", bn_momentum=0.1)
    moms = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert moms == {0.1}


def test_state_dict_and_madrylab_checkpoint_paths(tmp_path):
    import torchvision
    tv = torchvision.models.resnet18(weights=None)
    tv.load_state_dict({**tv.state_dict(), "conv1.weight": torch.ones_like(tv.conv1.weight)})
    plain = tmp_path / "plain.pt"
    torch.save(tv.state_dict(), plain)
    madry = tmp_path / "madry.ckpt"
    torch.save({"model": {**{f"module.model.{k}": v for k, v in tv.state_dict().items()},
                          **{f"module.attacker.model.{k}": v for k, v in tv.state_dict().items()},
                          "module.normalizer.new_mean": torch.zeros(3)}, "epoch": 1}, madry)
    for path in (plain, madry):
        model = load_model("resnet18", weights=path, num_classes=1000)
        assert torch.equal(model.features.stem[0].weight, torch.ones_like(tv.conv1.weight))
        assert torch.equal(model.classifier[1].weight, tv.fc.weight)


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="Known: efficientnet_lite0"):
        load_model("vgg11")
    with pytest.raises(FileNotFoundError, match="neither 'imagenet' nor an existing file"):
        load_model("resnet18", weights=tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_model("resnet18", weights=bad)


def test_torchvision_imagenet_offline_error_names_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="resnet18-.*pth"):
        load_model("resnet18", weights="imagenet")


def test_a_corrupt_torchvision_file_under_its_name_is_refused(monkeypatch, tmp_path):
    import torch.hub
    import torchvision
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path), raising=False)
    name = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    (tmp_path / "checkpoints").mkdir()
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "checkpoints" / name)
    with pytest.raises(ValueError, match="not the published file of torchvision's ImageNet resnet18"):
        load_model("resnet18", weights="imagenet")


def test_checksums_in_file_names_are_verified(tmp_path):
    import hashlib

    from nbs_lib.models.checksums import expected_prefix, verified
    good = tmp_path / "w.pth"
    good.write_bytes(b"weights")
    named = tmp_path / f"model-{hashlib.sha256(b'weights').hexdigest()[:8]}.pth"
    good.rename(named)
    assert verified(named, "a model") == named and expected_prefix("x-0123abcd.pth") == "0123abcd"
    named.write_bytes(b"other bytes")  # same name, other content: hashed again and refused
    with pytest.raises(ValueError, match="corrupt or another model's"):
        verified(named, "a model")
    with pytest.raises(ValueError, match="does not carry a checksum"):
        verified(tmp_path / "plain.pth", "a model")


def test_a_checkpoint_of_another_backbone_is_a_clear_error(tmp_path):
    import torchvision
    path = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit resnet18"):
        load_model("resnet18", weights=path)


def test_model_info_sizes_grow_with_capacity():
    sizes = [model_info(load_model(a, num_classes=10)).size_mb for a in LITES]
    assert sizes == sorted(sizes)
    params = model_info(load_model("efficientnet_lite0", num_classes=1000)).parameters
    assert 3.3e6 < params < 3.5e6  # f alone: the 1000-class head's 1.28 M parameters are not counted


def test_model_size_is_the_backbone_as_the_paper_counts_it():
    """Table 3 gives ResNet-18 42.7 MB and ResNet-50 90.1 MB: f without the head (with ImageNet's
    head they would be 44.6 and 97.5), whatever the classes."""
    assert round(model_info(load_model("resnet18", num_classes=1000)).size_mb, 1) == 42.7
    assert abs(model_info(load_model("resnet50", num_classes=10)).size_mb - 90.1) < 0.5
    assert model_info(load_model("efficientnet_lite0", num_classes=10)).size_mb == \
        model_info(load_model("efficientnet_lite0", num_classes=1000)).size_mb


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18"])
def test_exported_weights_load_back_as_the_same_model(arch, tmp_path):
    """A source trained here is stored in its backbone's file format (chapters 5-7 fine-tune from it):
    f comes back exactly (g is a fresh head whenever the class count is not ImageNet's, as for the
    ImageNet files)."""
    from nbs_lib.models.registry import exportable_state

    model = load_model(arch, weights=None, num_classes=7, seed=3).eval()
    path = tmp_path / "weights.pt"
    torch.save(exportable_state(model), path)
    again = load_model(arch, weights=path, num_classes=7, seed=4).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(again.features(x), model.features(x), atol=1e-5)
    assert not torch.allclose(load_model(arch, weights=None, num_classes=7, seed=4).features(x), model.features(x))
