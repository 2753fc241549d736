"""Code specs: what a code is, how it is packed, written as hex and compared: ``binary`` (sign
bits, Hamming) and ``pq`` (product-quantised bytes, codebooks, asymmetric distances).

A method declares the kind of code it gives (``"binary"`` or ``"pq"``), and its checkpoint
records it. Only a kind in ``WRITABLE_KINDS`` can be written into a code set, indexed and served.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# The kinds the main job carries from training to the serve app. "pq" code sets and index sets
# are written (the encode job, the index build), but the serve app and metrics do not take them yet.
WRITABLE_KINDS = ("binary",)


def check_writable(code_kind: str, source: str = "") -> str:
    """``code_kind`` if codes of that kind can be written, else ``ValueError`` saying which can."""
    if code_kind not in WRITABLE_KINDS:
        where = f"{source} gives" if source else "got"
        raise ValueError(
            f"{where} {code_kind!r} codes; rayhash writes only {', '.join(WRITABLE_KINDS)} codes so far "
            "(product-quantised codes are not carried through the serve app yet)"
        )
    return code_kind


def parse_hex(texts: list[str], nbytes: int, wrong_length: Callable[[int, str], str]) -> np.ndarray:
    """Hex strings of exactly ``2 * nbytes`` digits as uint8 ``(n, nbytes)``; a ``ValueError`` names
    the bad one, with ``wrong_length(i, text)`` as the message for a string of the wrong length."""
    out = np.empty((len(texts), nbytes), dtype=np.uint8)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"code {i} must be a hex string, got {type(text).__name__}")
        if len(text) != 2 * nbytes:
            raise ValueError(wrong_length(i, text))
        try:
            out[i] = np.frombuffer(bytes.fromhex(text), dtype=np.uint8)
        except ValueError:
            raise ValueError(f"code {i} is not valid hex: {text!r}") from None
    return out
