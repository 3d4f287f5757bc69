"""A container for key material that does not leak it by accident.

:class:`SecretKey` has a redacted ``repr``, constant-time equality, no hash, and refuses to be
pickled or copied. The bytes are reachable only through :meth:`SecretKey.reveal`, which makes each
use easy to find in review.
"""

from __future__ import annotations

import hmac
from typing import NoReturn

from ._repr import safe_repr

__all__ = ["SecretKey"]


class SecretKey:
    """Key material with a redacted repr, constant-time ``==`` and no pickling or copying."""

    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        if not isinstance(material, bytes | bytearray):
            raise TypeError("key material must be bytes")
        self._material = bytes(material)

    def reveal(self) -> bytes:
        """Return the raw key bytes. Every call site is a place where key material is handled."""
        return self._material

    def __len__(self) -> int:
        return len(self._material)

    @safe_repr
    def __repr__(self) -> str:
        return f"SecretKey(<{len(self._material) * 8}-bit, redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return hmac.compare_digest(self._material, other._material)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretKey cannot be pickled")

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SecretKey cannot be pickled")

    def __copy__(self) -> NoReturn:
        raise TypeError("SecretKey cannot be copied")

    def __deepcopy__(self, memo: object) -> NoReturn:
        raise TypeError("SecretKey cannot be copied")
