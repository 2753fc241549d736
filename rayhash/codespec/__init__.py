"""Code specs: what a code is (binary sign bits), how it is packed, written as hex and compared.

A method declares the kind of code it gives (``"binary"`` or ``"pq"``), and its checkpoint
records it. Only a kind with a spec here can be written into a code set, indexed and served.
"""

from __future__ import annotations

# Product-quantised codes ("pq": codebooks, asymmetric distances) have no spec yet.
WRITABLE_KINDS = ("binary",)


def check_writable(code_kind: str, source: str = "") -> str:
    """``code_kind`` if codes of that kind can be written, else ``ValueError`` saying which can."""
    if code_kind not in WRITABLE_KINDS:
        where = f"{source} gives" if source else "got"
        raise ValueError(
            f"{where} {code_kind!r} codes; rayhash writes only {', '.join(WRITABLE_KINDS)} codes so far "
            "(product-quantised codes are not implemented yet)"
        )
    return code_kind
