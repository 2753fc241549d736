"""The encoder replica's upload decoder: at most ``max_concurrent`` decodes at once, and a JPEG
decoded at the model input's scale under the pixel cap."""

import asyncio
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

import rayhash.serve.encoder as encoder_module
from rayhash.data.decode import ImageDecodeError
from rayhash.serve.encoder import UploadDecoder


def jpeg(size: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def decoder(**kw) -> UploadDecoder:
    return UploadDecoder(**{"max_bytes": 8 << 20, "max_pixels": 4_000_000, "max_concurrent": 2, "draft": 28, **kw})


@pytest.mark.parametrize("cap", [1, 3])
def test_at_most_max_concurrent_decodes_run_at_once(monkeypatch, cap):
    running, most, lock = [0], [0], threading.Lock()
    real = encoder_module.decode_image

    def counted(*args, **kwargs):  # the real decoder, counting those running beside it
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.05)  # long enough for the others to pile up
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(encoder_module, "decode_image", counted)
    bounded = decoder(max_concurrent=cap)

    async def many():
        return await asyncio.gather(*(bounded.decode(jpeg(64)) for _ in range(8)))

    assert all(image.shape == (32, 32, 1) for image in asyncio.run(many()))  # 64 px drafted to 32
    assert most[0] == cap


def test_a_jpeg_upload_decodes_at_the_model_input_scale_under_the_cap():
    image = asyncio.run(decoder(max_pixels=64 * 64).decode(jpeg(512)))  # fits only once drafted
    assert image.shape == (64, 64, 1)  # 1/8 scale: the smallest still >= 28 px a side
    with pytest.raises(ImageDecodeError, match="exceeds max_pixels=4095"):
        asyncio.run(decoder(max_pixels=64 * 64 - 1).decode(jpeg(512)))
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "BMP")
    with pytest.raises(ImageDecodeError, match="BMP is not one of PNG, JPEG, WEBP"):
        asyncio.run(decoder().decode(buf.getvalue()))
