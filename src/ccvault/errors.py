"""ccvault's exception tree.

Every exception ccvault raises on purpose derives from :class:`CcvaultError`::

    CcvaultError
     ├── ConfigurationError        the installation, settings or key files are wrong
     ├── ValueRejectedError        a value of the right type its column cannot hold (too long,
     │                             too many digits, out of range); also a ValueError
     ├── DecryptionError           the one opaque failure for tampered, malformed or foreign data
     ├── SubjectShreddedError      the subject was erased (a business state, not a crypto fault)
     │                             (both name table, column and primary key when a column
     │                             read raises them; DecryptionError names the item's
     │                             index when decrypt_many raises or returns it)
     ├── RetentionExpiredError     the value's retention period expired (a business state)
     ├── SubjectHeldError          shred() of a subject under an active legal hold, refused
     │                             (nothing destroyed); override_hold=True overrides it
     ├── HoldNotFoundError         no legal hold of that id (also a LookupError)
     ├── ErasureIncompleteError    shred() destroyed the keys but could not clear everything the
     │                             subject left (blind indexes): carries the receipt
     ├── KeyStoreError             the key store is unreachable or inconsistent
     ├── LedgerUnavailableError    the erasure ledger could not be reached or did not take an
     │                             entry (it names where, credentials masked)
     ├── LedgerIntegrityError      a ledger entry is tampered with, missing, reordered, or names
     │                             another installation (it names each by sequence number)
     └── KmsError                  a KMS backend refused or failed
          ├── KmsUnavailableError  the KMS could not be reached in time (fail closed; retried
          │                        with backoff before it is raised)
          ├── KmsAccessDeniedError the credentials may not use the key (never retried)
          ├── KmsKeyNotFoundError  the root key does not exist (never retried)
          ├── KmsKeyDisabledError  the root key is disabled (never retried)
          └── KmsKeyPendingDeletionError
                                   the root key is scheduled for deletion or destroyed

Wrong argument *types* (a subject that is not of the installation's subject type) raise the
built-in :class:`TypeError`, as Python code does.

No message carries plaintext, key material or a subject in clear: messages are fixed strings or
name only identifiers that are safe to log.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "CcvaultError",
    "ConfigurationError",
    "DecryptionError",
    "ErasureIncompleteError",
    "HoldNotFoundError",
    "KeyStoreError",
    "KmsAccessDeniedError",
    "KmsError",
    "KmsKeyDisabledError",
    "KmsKeyNotFoundError",
    "KmsKeyPendingDeletionError",
    "KmsUnavailableError",
    "LedgerIntegrityError",
    "LedgerUnavailableError",
    "RetentionExpiredError",
    "SubjectHeldError",
    "SubjectShreddedError",
    "ValueRejectedError",
]


class CcvaultError(Exception):
    """Root of every error ccvault raises on purpose."""


class ConfigurationError(CcvaultError):
    """The installation, its settings or its key files are not usable as given."""


class ValueRejectedError(CcvaultError, ValueError):
    """A value of the right Python type that its encrypted column cannot hold, refused before
    anything is encrypted or sent: longer than a ``String(n)``, more digits than a
    ``Numeric(p, s)``, out of an integer type's range, not finite, not one of an ``Enum``'s
    values... (docs/sqlalchemy.md, "Types"). The message and :attr:`column` name the column's
    context label and the reason, never the value.
    """

    def __init__(self, message: str, *, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


def _show(value: object) -> str:
    return repr(value) if isinstance(value, str | bytes) else str(value)


class _Located(Exception):
    """Where a read failed: for a column read ``table``, ``column`` and ``primary_key`` (the
    row's primary key values in key order, or None when the statement did not select them all);
    for ``vault.decrypt_many``, ``index``, the item's position in its input. None where they do
    not apply. Never the value, its plaintext or its subject."""

    MESSAGE = ""

    def __init__(
        self,
        message: str | None = None,
        *,
        table: str | None = None,
        column: str | None = None,
        primary_key: tuple[object, ...] | None = None,
        index: int | None = None,
    ) -> None:
        self.table = table
        self.column = column
        self.primary_key = None if primary_key is None else tuple(primary_key)
        self.index = index
        text = self.MESSAGE if message is None else message
        if index is not None:
            text = f"{text}: item {index}"
        if table is not None or column is not None:
            pk = self.primary_key
            if pk is None:
                key = "not selected"
            elif len(pk) == 1:
                key = _show(pk[0])
            else:
                key = f"({', '.join(_show(v) for v in pk)})"
            text = f"{text}: {table}.{column}, primary key {key}"
        super().__init__(text)


class DecryptionError(_Located, CcvaultError):
    """A ciphertext could not be opened.

    Raised, always with the same message, for tampering, truncation, an unknown format version,
    suite or key id, a wrong context label and a wrong subject, so that the error is no oracle.
    Raised by a column read, it also names where: ``table``, ``column`` and ``primary_key``
    (also in the message), never why; raised (or returned) by ``vault.decrypt_many``, the
    item's ``index`` ("ciphertext could not be decrypted: item 3").
    """

    MESSAGE = "ciphertext could not be decrypted"


class SubjectShreddedError(_Located, CcvaultError):
    """The data subject was shredded: its keys are destroyed and no new key will be made.

    Raised by a strict column read, it names ``table``, ``column`` and ``primary_key`` as
    :class:`DecryptionError` does."""

    MESSAGE = "the data subject has been shredded"


class RetentionExpiredError(_Located, CcvaultError):
    """The value belongs to a retention period whose secret was destroyed by retention
    enforcement (and its subject was not held), or a write names a period already expired.

    Raised by a strict column read, it names ``table``, ``column`` and ``primary_key`` as
    :class:`DecryptionError` does."""

    MESSAGE = "the value's retention period has expired"


class SubjectHeldError(CcvaultError):
    """``shred()`` of a subject under one or more active legal holds: nothing was destroyed.
    ``hold_ids`` are the active holds' ids (the message names them and their number, never a
    case or the subject); ``shred(subject, override_hold=True)`` shreds it all the same and
    records the override in the erasure ledger (docs/erasure.md, 'Legal holds')."""

    def __init__(self, hold_ids: Iterable[str]) -> None:
        self.hold_ids = tuple(hold_ids)
        n = len(self.hold_ids)
        super().__init__(
            f"the data subject is under {n} active legal hold{'s' if n != 1 else ''} "
            f"({', '.join(self.hold_ids)}): nothing was destroyed; release the holds, or shred "
            "with override_hold=True (recorded in the erasure ledger)"
        )


class HoldNotFoundError(CcvaultError, LookupError):
    """No legal hold of the given id in this installation (``vault.release(hold_id)``).
    ``hold_id`` is the id asked for."""

    def __init__(self, hold_id: str) -> None:
        self.hold_id = hold_id
        super().__init__(f"this installation records no legal hold with id {hold_id[:64]!r}")


class ErasureIncompleteError(CcvaultError):
    """``shred()`` destroyed the subject's keys (committed: the values are unreadable) but could
    not clear what the subject left beside them: the blind indexes of ``tables``.

    ``receipt`` is the signed :class:`~ccvault.ErasureReceipt` that ``shred()`` would have
    returned (None only on the error an after-shred hook raises to the vault). ``tables`` names
    the tables not swept, ``columns`` the context labels of their searchable columns, ``swept``
    the labels that were swept. Calling ``shred()`` again for the subject returns the same
    receipt and sweeps again. The message names the tables and why (error type and database
    code), never the subject.
    """

    def __init__(
        self,
        message: str,
        *,
        receipt: Any = None,
        tables: Iterable[str] = (),
        columns: Iterable[str] = (),
        swept: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.receipt: Any = receipt  # an ErasureReceipt (errors sit below the audit layer)
        self.tables = tuple(tables)
        self.columns = tuple(columns)
        self.swept = frozenset(swept)


class KeyStoreError(CcvaultError):
    """The key store could not be read or written, or holds inconsistent rows."""


class LedgerUnavailableError(CcvaultError):
    """The erasure ledger (``CCVAULT_LEDGER_URL``) could not be read or written: the server,
    bucket or file is unreachable, refused the credentials, or kept taking the sequence number
    an append needed. ``location`` is where the ledger is, with credentials masked."""

    def __init__(self, message: str, *, location: str | None = None) -> None:
        super().__init__(message)
        self.location = location


class LedgerIntegrityError(CcvaultError):
    """The erasure ledger holds an entry that is tampered with, missing, out of order, truncated,
    or that names another installation (a foreign ledger is refused). ``problems`` lists what
    was found, each naming the entry by sequence number; ``seq`` is the first one (None when
    none applies). The message names kinds and sequence numbers, never a record's content."""

    def __init__(
        self, message: str, *, problems: Iterable[Any] = (), seq: int | None = None
    ) -> None:
        super().__init__(message)
        self.problems: tuple[Any, ...] = tuple(problems)  # LedgerProblem (erasure layer)
        self.seq = seq


class KmsError(CcvaultError):
    """A KMS backend refused an operation (access denied, disabled or unknown root key...)."""


class KmsUnavailableError(KmsError):
    """The KMS could not be reached within the configured retries and timeouts."""


class KmsAccessDeniedError(KmsError):
    """The KMS refused the credentials: missing permission, bad or expired token."""


class KmsKeyNotFoundError(KmsError):
    """The root key named by the configuration or by a wrapped key does not exist."""


class KmsKeyDisabledError(KmsError):
    """The root key exists but is disabled; an administrator can enable it again."""


class KmsKeyPendingDeletionError(KmsError):
    """The root key is scheduled for deletion (or already destroyed): what it wrapped is gone
    once the deletion completes. This is how an epoch's erasure horizon is reached."""
