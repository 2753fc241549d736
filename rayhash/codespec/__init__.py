"""Code specs: what a code is, how it is packed, written as hex and compared: ``binary`` (sign
bits, Hamming) and ``pq`` (product-quantised bytes, codebooks, asymmetric distances).

A method declares the kind of code it gives (``"binary"`` or ``"pq"``), and its checkpoint
records it. Only a kind in ``WRITABLE_KINDS`` can be written into a code set, indexed and served.
"""

from __future__ import annotations

# "pq" has its spec (codespec.pq) and index builders, but the code set, encode job, serve app
# and metrics do not carry codebooks yet.
WRITABLE_KINDS = ("binary",)


def check_writable(code_kind: str, source: str = "") -> str:
    """``code_kind`` if codes of that kind can be written, else ``ValueError`` saying which can."""
    if code_kind not in WRITABLE_KINDS:
        where = f"{source} gives" if source else "got"
        raise ValueError(
            f"{where} {code_kind!r} codes; rayhash writes only {', '.join(WRITABLE_KINDS)} codes so far "
            "(product-quantised codes are not carried through the code set and serve app yet)"
        )
    return code_kind
