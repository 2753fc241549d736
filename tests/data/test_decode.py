import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from rayhash.data.decode import ImageDecodeError, decode_all, decode_image, fit_square

skimage_data = pytest.importorskip("skimage.data")


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR declaring width x height, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# Photoshop: signature, version 1, 6 reserved, 3 channels, 2x2, 8 bits, RGB mode; three
# empty sections; raw (uncompressed) planes.
PSD_2X2_RGB = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 2, 2, 8, 3) + bytes(12) + struct.pack(">H", 0) + bytes(range(12))


@pytest.fixture(scope="module")
def astronaut():
    return skimage_data.astronaut()  # 512x512 RGB photograph


def test_lossless_formats_round_trip(astronaut):
    small = astronaut[:64, :48]
    for fmt in ("PNG", "BMP", "TIFF", "WEBP"):
        kw = {"lossless": True} if fmt == "WEBP" else {}
        np.testing.assert_array_equal(decode_image(encode(small, fmt, **kw)), small, err_msg=fmt)


def test_jpeg_modes_and_first_gif_frame(astronaut):
    jpg = encode(astronaut, "JPEG", quality=95)
    rgb = decode_image(jpg)
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - astronaut).mean() < 3  # lossy, but the same picture
    assert decode_image(jpg, mode="L").shape == (512, 512, 1)
    assert decode_image(jpg, mode=None).shape == (512, 512, 3)
    gray = skimage_data.camera()
    assert decode_image(encode(gray, "PNG"), mode=None).shape == (512, 512, 1)
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue(), mode="L").max() == 10


def test_alpha_is_dropped():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 255
    assert decode_image(encode(rgba, "PNG")).tolist() == np.tile([255, 0, 0], (4, 5, 1)).tolist()


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda png: b"", "empty"),
        (lambda png: b"these are not the pixels you are looking for", "not_an_image"),
        (lambda png: png[: len(png) // 2], "truncated"),
        (lambda png: png_header_only(20_000, 20_000), "decompression_bomb"),
        (lambda png: encode(np.zeros((16, 16, 3), np.uint8), "ICO"), "unsupported_format"),
        (lambda png: b"P6\n2 2\n255\n" + bytes(12), "unsupported_format"),  # PPM
        (lambda png: PSD_2X2_RGB, "unsupported_format"),
    ],
)
def test_bad_bytes_give_a_reason(astronaut, make, reason):
    with pytest.raises(ImageDecodeError) as info:
        decode_image(make(encode(astronaut, "PNG")))
    assert info.value.reason == reason


def test_limits_are_checked_before_decoding(astronaut):
    png = encode(astronaut, "PNG")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png, max_bytes=len(png) - 1)
    assert info.value.reason == "too_large"
    # 512 * 512 > 100_000: refused from the header, below PIL's own bomb limit
    with pytest.raises(ImageDecodeError) as info:
        decode_image(png, max_pixels=100_000)
    assert info.value.reason == "decompression_bomb"
    assert decode_image(png, max_pixels=512 * 512).shape == (512, 512, 3)


# PIL warns about mangled TIFF tags and about headers past its own pixel limit
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")
def test_mangled_bytes_raise_only_decode_errors(astronaut):
    rng = np.random.default_rng(0)
    formats = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
    sources = [encode(astronaut[:32, :32], fmt) for fmt in formats]
    failures = 0
    for i in range(600):
        data = np.frombuffer(sources[i % len(sources)], np.uint8).copy()
        pos = rng.integers(0, len(data), size=rng.integers(1, 8))
        data[pos] = rng.integers(0, 256, size=len(pos))  # overwrite a few bytes
        if rng.random() < 0.3:
            data = data[: rng.integers(1, len(data))]
        try:
            out = decode_image(data.tobytes(), mode=None)
            assert out.dtype == np.uint8 and out.ndim == 3
        except ImageDecodeError:
            failures += 1
    assert failures > 50  # the mangling did break many of them


def test_fit_square_and_decode_all(astronaut):
    wide = astronaut[:100, :200]
    out = fit_square(wide, 32)
    assert out.shape == (32, 32, 3)
    images, kept, skipped = decode_all(
        [
            ("a", encode(wide, "PNG")),
            ("b", b"junk"),
            ("c", None),
            ("d", OSError("gone")),
            ("e", encode(astronaut, "PNG")),
        ],
        name="t",
        image_size=16,
    )
    assert images.shape == (2, 16, 16, 3) and kept == [0, 4]
    assert skipped == (("b", "not_an_image"), ("c", "empty"), ("d", "unreadable"))
    with pytest.raises(ValueError, match="pass image_size"):
        decode_all([("a", encode(wide, "PNG")), ("e", encode(astronaut, "PNG"))], name="t")


def test_a_jpeg_drafts_to_the_smallest_scale_still_big_enough(astronaut):
    data = encode(astronaut, "JPEG", quality=90)  # 512 x 512
    for draft, side in ((28, 64), (64, 64), (65, 128), (200, 256), (300, 512), (None, 512)):
        assert decode_image(data, draft=draft).shape == (side, side, 3), draft
    # the pixel cap applies to what is decoded: at its edge, exactly 64 x 64 passes
    assert decode_image(data, draft=28, max_pixels=64 * 64).shape == (64, 64, 3)
    with pytest.raises(ImageDecodeError, match=r"512x512 pixels \(64x64 decoded\) exceeds") as e:
        decode_image(data, draft=28, max_pixels=64 * 64 - 1)
    assert e.value.reason == "decompression_bomb"
    # a PNG has no reduced-size decoding: its whole size counts
    png = encode(astronaut, "PNG")
    assert decode_image(png, draft=28, max_pixels=512 * 512).shape == (512, 512, 3)
    with pytest.raises(ImageDecodeError, match="512x512 pixels exceeds"):
        decode_image(png, draft=28, max_pixels=512 * 512 - 1)


def test_the_serving_formats_refuse_what_they_do_not_list(astronaut):
    from rayhash.data.decode import SERVING_FORMATS

    small = astronaut[:32, :32]
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert decode_image(encode(small, fmt), formats=SERVING_FORMATS).shape == (32, 32, 3)
    for fmt in ("GIF", "BMP", "TIFF"):
        assert decode_image(encode(small, fmt)).shape == (32, 32, 3)  # the encode job reads them
        with pytest.raises(ImageDecodeError, match=f"{fmt} is not one of PNG, JPEG, WEBP") as e:
            decode_image(encode(small, fmt), formats=SERVING_FORMATS)
        assert e.value.reason == "unsupported_format"
