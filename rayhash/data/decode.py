"""Decode untrusted image bytes into uint8 ``(H, W, C)`` arrays, or fail with a reason code.

The encode job and the Serve upload endpoint both call :func:`decode_image` on bytes that
anyone may have written, so every failure is an :class:`ImageDecodeError` whose ``reason``
can be counted in an errors table or returned as an HTTP 4xx:

- ``empty``, ``too_large``: rejected from the byte count alone;
- ``decompression_bomb``: more than ``max_pixels`` would be decoded (what the header declares,
  or for a JPEG decoded at reduced size with ``draft``, that size; PIL refuses anything over
  twice its ``Image.MAX_IMAGE_PIXELS`` regardless); refused before any pixel is decoded;
- ``unsupported_format``: a real image, but not in the allowed ``formats`` (by default
  :data:`ALLOWED_FORMATS`; the serving endpoint takes :data:`SERVING_FORMATS`);
- ``not_an_image``: no known image format;
- ``truncated``, ``corrupt``: the header parsed but the pixel data did not decode.

In-memory sources also report ``unreadable`` (the bytes could not be fetched).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
SERVING_FORMATS = ("PNG", "JPEG", "WEBP")  # a public upload route's: fewer decoders, less attack surface
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_BYTES = 32 << 20
MAX_PIXELS = 40_000_000  # a 40-megapixel photo; far above anything hashed at <= 224 px
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


class ImageDecodeError(ValueError):
    """Bytes that are not a decodable image; ``reason`` is a short code (see module doc)."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason


def decode_image(
    data: bytes,
    *,
    max_bytes: int = MAX_BYTES,
    max_pixels: int = MAX_PIXELS,
    mode: str | None = "RGB",
    formats: tuple[str, ...] = ALLOWED_FORMATS,
    draft: int | None = None,
) -> np.ndarray:
    """Decode ``data`` to uint8 ``(H, W, C)``: C=3 for ``mode="RGB"``, 1 for ``"L"``; with
    ``mode=None``, 1 for grayscale sources and 3 otherwise. Alpha is dropped, EXIF rotation
    applied, and an animated GIF gives its first frame.

    ``draft``: decode a JPEG at 1/2, 1/4 or 1/8 of its size (the DCT's own scaling), the
    smallest that keeps both sides at least ``draft`` pixels: the memory of a 12 MP photo
    drops 64-fold when the model only looks at a few hundred pixels. Other formats decode whole."""
    if mode not in ("RGB", "L", None):
        raise ValueError(f"mode must be 'RGB', 'L' or None, got {mode!r}.")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode_image takes bytes, got {type(data).__name__}.")
    if len(data) == 0:
        raise ImageDecodeError("empty", "zero bytes")
    if len(data) > max_bytes:
        raise ImageDecodeError("too_large", f"{len(data)} bytes exceeds max_bytes={max_bytes}")
    # No warnings.catch_warnings here: it swaps process-wide state, and the Serve endpoint
    # decodes in threads. Our max_pixels check runs before PIL's own bomb limits matter.
    img = _open(bytes(data), formats)
    w, h = img.size
    if draft and img.format == "JPEG":
        img.draft(img.mode, (draft, draft))  # only sets the decoder's scale: nothing is decoded yet
    dw, dh = img.size
    if dw * dh > max_pixels:
        decoded = f" ({dw}x{dh} decoded)" if (dw, dh) != (w, h) else ""
        raise ImageDecodeError("decompression_bomb", f"{w}x{h} pixels{decoded} exceeds max_pixels={max_pixels}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        target = mode or ("L" if img.mode in _GRAY_MODES else "RGB")
        array = np.asarray(img.convert(target), dtype=np.uint8)
    except Exception as e:  # PIL raises OSError, SyntaxError, struct.error, ... here
        reason = "truncated" if "truncated" in str(e) or isinstance(e, EOFError) else "corrupt"
        raise ImageDecodeError(reason, f"{img.format} {w}x{h}: {e}") from e
    return array[..., None] if array.ndim == 2 else array


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop ``image`` (H, W, C) to a square and resize it to ``size`` x ``size``."""
    if image.shape[:2] == (size, size):
        return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    out = np.asarray(ImageOps.fit(pil, (size, size), Image.Resampling.BICUBIC))
    return out[..., None] if out.ndim == 2 else out


def decode_all(
    items: Iterable[tuple[str, bytes | Exception | None]],
    *,
    name: str,
    image_size: int | None = None,
    **decode_options,
) -> tuple[np.ndarray, list[int], tuple[tuple[str, str], ...]]:
    """Decode ``(key, bytes)`` pairs into one ``(n, H, W, C)`` array for an in-memory source.

    A value that is an exception (failed read) or None counts as bad. Returns the images, the
    positions in ``items`` that decoded, and ``(key, reason)`` for the rest.
    """
    images, kept, skipped = [], [], []
    for i, (key, data) in enumerate(items):
        try:
            if data is None:
                raise ImageDecodeError("empty", "null value")
            if isinstance(data, Exception):
                raise ImageDecodeError("unreadable", f"{type(data).__name__}: {data}")
            image = decode_image(data, **decode_options)
        except ImageDecodeError as e:
            skipped.append((key, e.reason))
            logger.debug("%s: skipping %s: %s", name, key, e)
            continue
        images.append(image if image_size is None else fit_square(image, image_size))
        kept.append(i)
    total = len(kept) + len(skipped)
    if skipped:
        logger.warning(
            "%s: skipped %d of %d images that did not decode, e.g. %s", name, len(skipped), total, skipped[:3]
        )
    if not images:
        raise ValueError(f"{name}: none of the {total} images decoded; first: {skipped[:5]}.")
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise ValueError(f"{name}: images differ in shape {shapes[:4]}; pass image_size.")
    return np.stack(images), kept, tuple(skipped)


def _open(data: bytes, formats: tuple[str, ...] = ALLOWED_FORMATS) -> Image.Image:
    """Parse the header with the allowed formats only; name the format of anything else."""
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # -W error
        raise ImageDecodeError("decompression_bomb", str(e)) from e
    except UnidentifiedImageError:
        pass
    except Exception as e:  # a known header that fails to parse (bad sizes, short chunks)
        raise ImageDecodeError("corrupt", f"{type(e).__name__}: {e}") from e
    # Header parsing only (no pixel decoding) to say which format was refused.
    try:
        fmt = Image.open(io.BytesIO(data)).format
    except Exception:
        fmt = None
    if fmt:
        raise ImageDecodeError("unsupported_format", f"{fmt} is not one of {', '.join(formats)}")
    raise ImageDecodeError("not_an_image", f"no image format starts with {data[:8]!r}")
