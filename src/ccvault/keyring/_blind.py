"""Owns the blind-index keys: the installation's blind-index root, one HMAC key per column and
normalizer, and the record of which columns have blind indexes. Must not index values of its
own accord nor sweep tables: the column types index, the integration's after-shred hooks sweep.
"""

from __future__ import annotations

import hashlib
import threading

from .._secret import SecretKey
from ..crypto._blind import BlindIndexer, Normalizer, column_key
from ..crypto._primitives import HmacSha256
from ..keystore._protocol import KeyStore
from ..keystore._records import KeyKind
from ._epochs import Epochs
from ._options import VaultOptions

__all__ = ["BlindIndexes"]

_SEARCHABLE_META = "searchable:"  # ccvault_meta rows: one per column label with blind indexes


class BlindIndexes:
    """Blind indexers by column, their keys derived once from the root (created on first use)."""

    def __init__(self, store: KeyStore, epochs: Epochs, options: VaultOptions) -> None:
        self._store = store
        self._epochs = epochs
        self._options = options
        self._lock = threading.Lock()
        self._root: SecretKey | None = None
        self._keys: dict[tuple[str, str, int, str], HmacSha256] = {}
        self._indexers: dict[tuple[str, Normalizer, int], BlindIndexer] = {}
        self._searchable: tuple[float, frozenset[str]] | None = None  # (read at, labels)

    def indexer(self, label: str, normalizer: Normalizer, length: int) -> BlindIndexer:
        """The blind index of the column labelled ``label`` as a callable (see
        :meth:`Vault.blind_indexer`)."""
        indexer = self._indexers.get((label, normalizer, length))
        if indexer is not None:
            return indexer
        cache_key = (label, normalizer.id, normalizer.version, normalizer.params)
        key = self._keys.get(cache_key)
        if key is None:
            with self._lock:
                if self._root is None:
                    self._root = self._epochs.long_lived_key(KeyKind.BLIND_INDEX)
                key = HmacSha256(column_key(self._root.reveal(), normalizer, label))
                self._keys[cache_key] = key
        indexer = BlindIndexer(key, normalizer, length)
        if not self._options.readonly and label not in self.searchable_labels():
            self._record_searchable(label)
        self._indexers[(label, normalizer, length)] = indexer
        return indexer

    def _record_searchable(self, label: str) -> None:
        """Note in the key store that blind indexes exist for the column labelled ``label``, so
        that a shred from a process that never imported that model can say what it left."""
        digest = hashlib.sha256(label.encode("utf-8")).hexdigest()[:40]
        self._store.put_meta_if_absent(_SEARCHABLE_META + digest, label[:255])
        self._searchable = None

    def searchable_labels(self) -> frozenset[str]:
        """Context labels of every column with blind indexes in this installation (re-read
        after ``cache_ttl``: other processes add to them)."""
        cached = self._searchable
        now = self._options.monotonic()
        if cached is not None and now - cached[0] < self._options.cache_ttl:
            return cached[1]
        labels = frozenset(self._store.meta(_SEARCHABLE_META).values())
        self._searchable = (now, labels)
        return labels
