"""An image lake of real Fashion-MNIST PNGs with seeded bad files, and a second checkpoint."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

N_GOOD = 300
MAX_PIXELS = 1_000_000  # the lake's "bomb" is a 4000x4000 PNG of 16 KB


@dataclass(frozen=True)
class Lake:
    root: str
    good: dict[str, np.ndarray]  # id -> uint8 (28, 28, 1) image
    bad: dict[str, str]  # id -> the reason it must be rejected with
    max_pixels: int = MAX_PIXELS  # the limit that makes bad/bomb.png a decompression bomb


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def bad_files() -> dict[str, tuple[bytes, str]]:
    noise = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    png = _encoded(Image.fromarray(noise), "PNG")  # cut in half: the header parses, the pixels end early
    return {
        "bad/truncated.png": (png[: len(png) // 2], "truncated"),
        "bad/empty.png": (b"", "empty"),
        "bad/notes.png": (b"a text file that happens to end in .png", "not_an_image"),
        "bad/bomb.png": (_encoded(Image.new("L", (4000, 4000)), "PNG"), "decompression_bomb"),
        "bad/scan.pcx": (_encoded(Image.new("L", (28, 28), 7), "PCX"), "unsupported_format"),
    }


def make_checkpoint(uri: str, seed: int) -> str:
    import torch

    from rayhash.models import ModelConfig, build_model, checkpoint

    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone="small_cnn", bits=64)).eval()
    checkpoint.save(uri, config={"model": {"backbone": "small_cnn", "bits": 64}}, model=model.state_dict())
    return uri


@pytest.fixture(scope="session")
def fmnist_lake(tmp_path_factory, fashion_mnist) -> Lake:
    root = tmp_path_factory.mktemp("lake")
    good = {}
    for pos in range(N_GOOD):
        image = fashion_mnist.images[pos]
        id_ = f"class{fashion_mnist.labels[pos]}/{pos:05d}.png"
        (root / id_).parent.mkdir(exist_ok=True)
        Image.fromarray(image[..., 0]).save(root / id_)
        good[id_] = image
    bad = {}
    for id_, (data, reason) in bad_files().items():
        (root / id_).parent.mkdir(exist_ok=True)
        (root / id_).write_bytes(data)
        bad[id_] = reason
    return Lake(str(root), good, bad)


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory) -> str:
    """A second model version (another seed): its codes differ from ``tiny_checkpoint``'s."""
    return make_checkpoint(str(tmp_path_factory.mktemp("ckpt2") / "other"), seed=1)
