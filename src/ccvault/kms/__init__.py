"""KMS backends: the :class:`Kms` protocol and its implementations (see docs/kms.md).

``LocalKms`` (master-key files) and ``MultiKms`` need nothing more. ``AwsKms`` needs boto3 and
``VaultTransitKms`` hvac, imported when one is built: ``pip install 'ccvault[aws]'`` or
``'ccvault[vault]'``.
"""

from ._aws import AwsKms
from ._local import LocalKms
from ._multi import MultiKms
from ._protocol import Kms, RootState, WrappedKey
from ._retry import RetryPolicy
from ._vault_transit import VaultTransitKms

__all__ = [
    "AwsKms",
    "Kms",
    "LocalKms",
    "MultiKms",
    "RetryPolicy",
    "RootState",
    "VaultTransitKms",
    "WrappedKey",
]
