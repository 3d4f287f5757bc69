"""ccvault's cryptographic core: primitives, the value format, key wrapping, subject encoding.

Internal to ccvault: the stable, safe surface is :class:`ccvault.Vault`. This package is the only
place that imports ``cryptography.hazmat``.
"""
