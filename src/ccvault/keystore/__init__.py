"""Key stores: where wrapped keys, epochs and subject heads live.

Never a key or subject in clear.
"""

from ._cache import TtlCache
from ._protocol import KeyStore
from ._records import EpochRecord, HeadRecord, KeyKind, KeyRecord, State
from ._sql import SqlKeyStore

__all__ = [
    "EpochRecord",
    "HeadRecord",
    "KeyKind",
    "KeyRecord",
    "KeyStore",
    "SqlKeyStore",
    "State",
    "TtlCache",
]
