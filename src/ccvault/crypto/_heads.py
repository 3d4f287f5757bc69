"""The bytes a subject head's MAC covers (docs/format.md, section 3a).

A subject head is the fence through which key creation and shred go. Its state is authenticated
with HMAC-SHA256 under the installation's long-lived head-MAC key::

    mac = HMAC-SHA256(K_head, lp("ccvault/head/v1", installation id (16), ref (32),
                                  key id (16), state (UTF-8), u32(current version)))

The MAC itself is computed by the vault, which holds the key; the key store only stores it.
"""

from __future__ import annotations

from ._encoding import lp, u32

__all__ = ["HEAD_MAC_LABEL", "head_mac_message"]

HEAD_MAC_LABEL = b"ccvault/head/v1"
_U32_MAX = 2**32 - 1


def head_mac_message(
    installation_id: bytes, ref: bytes, key_id: bytes, state: str, current_version: int
) -> bytes:
    """The message a head's MAC covers. A field no head written by ccvault can hold (a version
    outside u32) is a ValueError: such a row never authenticates."""
    if type(current_version) is not int or not 0 <= current_version <= _U32_MAX:
        raise ValueError("a subject head's version is outside u32")
    return lp(
        HEAD_MAC_LABEL, installation_id, ref, key_id, state.encode("utf-8"), u32(current_version)
    )
