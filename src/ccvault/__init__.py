"""ccvault: contact-center customer data, encrypted at rest and erasable on demand.

>>> from ccvault import Vault                                           # doctest: +SKIP
>>> vault = Vault.from_settings()                                       # doctest: +SKIP
>>> blob = vault.encrypt(                                               # doctest: +SKIP
...     customer_id, b"+44 20 7946 0000", context="customers.phone"
... )
>>> receipt = vault.shred(customer_id)                                  # doctest: +SKIP
"""

from ._sentinels import EXPIRED, SHREDDED, Sentinel
from ._settings import CcvaultSettings
from .audit import DestroyedKey, ErasureReceipt
from .erasure import Hold, RetentionReport, ShredPreview, ShredResult
from .errors import (
    CcvaultError,
    ConfigurationError,
    DecryptionError,
    ErasureIncompleteError,
    HoldNotFoundError,
    KeyStoreError,
    KmsAccessDeniedError,
    KmsError,
    KmsKeyDisabledError,
    KmsKeyNotFoundError,
    KmsKeyPendingDeletionError,
    KmsUnavailableError,
    LedgerIntegrityError,
    LedgerUnavailableError,
    RetentionExpiredError,
    SubjectHeldError,
    SubjectShreddedError,
    ValueRejectedError,
)
from .vault import NO_SUBJECT, DevelopmentDefaultWarning, RotationReport, Vault

__version__ = "0.1.0"

__all__ = [
    "EXPIRED",
    "NO_SUBJECT",
    "SHREDDED",
    "CcvaultError",
    "CcvaultSettings",
    "ConfigurationError",
    "DecryptionError",
    "DestroyedKey",
    "DevelopmentDefaultWarning",
    "ErasureIncompleteError",
    "ErasureReceipt",
    "Hold",
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
    "RetentionReport",
    "RotationReport",
    "Sentinel",
    "ShredPreview",
    "ShredResult",
    "SubjectHeldError",
    "SubjectShreddedError",
    "ValueRejectedError",
    "Vault",
    "__version__",
]
