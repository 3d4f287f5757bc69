"""ccvault's benchmark harness: ``python -m benchmarks [--quick] [--only NAME]``.

Every figure is measured in one process run, side by side with its baseline (raw AES-GCM, a peer
library or a plaintext table), as the median of at least five repeats with its spread. Results go
to ``benchmarks/results/latest.{json,md,png}``; docs/performance.md explains each figure.

The peers (sqlalchemy-utils, Tink, the AWS Encryption SDK) and matplotlib are benchmark-only
dependencies, listed in ``benchmarks/requirements.txt`` and installed by ``nox -s bench``; they are
never dependencies of ccvault itself.
"""
