"""KMS backends: the :class:`Kms` protocol and its implementations.

``LocalKms`` (master-key files) ships with the core. Cloud backends live in their own modules and
need an extra: ``pip install 'ccvault[aws]'`` or ``'ccvault[vault]'``.
"""

from ._local import LocalKms
from ._multi import MultiKms
from ._protocol import Kms, RootState, WrappedKey
from ._retry import RetryPolicy

__all__ = ["Kms", "LocalKms", "MultiKms", "RetryPolicy", "RootState", "WrappedKey"]
