"""Unambiguous byte encodings shared by every format ccvault writes."""

from __future__ import annotations

import struct

__all__ = ["U32", "lp", "u32"]

U32 = struct.Struct(">I")


def u32(n: int) -> bytes:
    return U32.pack(n)


def lp(*parts: bytes) -> bytes:
    """Concatenate each part prefixed with its length as a 32-bit big-endian integer."""
    return b"".join(U32.pack(len(p)) + p for p in parts)
