"""The key hierarchy below the KMS, in parts the vault builds and integrations use.

:class:`Epochs` (epoch keys and key records) ← :class:`KeyRing` (refs, key caches, fences,
leases, blind-index keys, after-shred hooks) ← :class:`Values` (opening values one by one or in
batches), and :class:`Rotation` (rotation, destruction);
``ccvault.erasure`` builds on them and :class:`ccvault.Vault` is the facade over all of them.
"""

from ._epochs import NO_REF, Epochs
from ._heads import FENCE_BREAKS, HeadCheck, Heads, StoreUpgrade
from ._leases import USE_BLOCK, VAULTWIDE_NONCE_BUDGET
from ._options import Installation, Progress, VaultOptions
from ._periods import PERIOD_VERSION, Periods, PeriodSecret
from ._ring import (
    VAULTWIDE_NO_RETENTION,
    AfterShred,
    AfterShredHooks,
    AfterShredMany,
    Expired,
    KeyRing,
    Tombstone,
)
from ._rotation import EpochInfo, Rotation, RotationReport
from ._values import CONTEXT_LPS, UNCHECKED, Item, Outcome, Values, context_bytes, context_lp

__all__ = [
    "CONTEXT_LPS",
    "FENCE_BREAKS",
    "NO_REF",
    "PERIOD_VERSION",
    "UNCHECKED",
    "USE_BLOCK",
    "VAULTWIDE_NONCE_BUDGET",
    "VAULTWIDE_NO_RETENTION",
    "AfterShred",
    "AfterShredHooks",
    "AfterShredMany",
    "EpochInfo",
    "Epochs",
    "Expired",
    "HeadCheck",
    "Heads",
    "Installation",
    "Item",
    "KeyRing",
    "Outcome",
    "PeriodSecret",
    "Periods",
    "Progress",
    "Rotation",
    "RotationReport",
    "StoreUpgrade",
    "Tombstone",
    "Values",
    "VaultOptions",
    "context_bytes",
    "context_lp",
]
