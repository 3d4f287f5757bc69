"""The SQL key store's tables (SQLAlchemy Core). The subject never appears in clear: only refs."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

__all__ = [
    "INVALIDATION_SEQ",
    "LEDGER_APPLIED",
    "PROPAGATION_BOUND",
    "RETENTION_POLICY",
    "SCHEMA_VERSION",
    "build_metadata",
]

SCHEMA_VERSION = 5
"""The key-store schema this library writes and reads (``ccvault_meta.schema_version``).

1. The first release.
2. ``subject_heads.mac``: each head's fence state authenticated under the installation's
   head-MAC key (docs/format.md, section 3a); never-seen subjects shredded keep a version-0
   tombstone. A store at version 1 is brought here by ``ccvault upgrade-store`` only.
3. ``invalidations``: the invalidation channel (seq, kind, ref or NULL for every one, period or
   NULL for every one, at), its seq allocated under the ``invalidation_seq`` row of ``meta``
   (commit order is seq order), and the installation's propagation bound in ``meta``
   (``propagation_bound_seconds``); the erasure journal's side in the key store (DESIGN.md,
   lifecycle rule 3): ``ledger_applied_seq`` in ``meta`` (the last ledger entry applied here),
   ``ledger_outbox`` (entries of ``ledger_mode="best-effort"`` shreds waiting for the ledger)
   and ``erasures`` (one row per receipt: its subject ref, its origin, its ledger seq and, once
   completed, its completion's seq). Stores at version 1 or 2 are brought here by
   ``ccvault upgrade-store`` only.
4. ``erasure_queue``: the erasures awaiting completion (DESIGN.md, lifecycle rule 4): receipt id,
   subject ref, the subject sealed under a version of the vault-wide erasure-queue key (kind
   ``queue`` in ``keys``; one version a UTC day, destroyed ``backup_retention`` after its day),
   and when the completion may run. A row goes when its completion is committed. Stores at
   version 1 to 3 are brought here by ``ccvault upgrade-store`` only.
5. ``holds``: legal holds (DESIGN.md, lifecycle rules 3 and 8): hold id, subject ref (never the
   subject), case (an opaque reference), who placed it, when, until when, the seq of its ledger
   entry and, once released or overridden by a shred, when, by whom, the overriding receipt's id
   and the seq of that entry. A hold, its release and its override are ledger entries first;
   the rows follow them under the ``ledger_applied_seq`` lock. Stores at version 1 to 4 are
   brought here by ``ccvault upgrade-store`` only.
"""

INVALIDATION_SEQ = "invalidation_seq"
"""``meta`` row (schema 3): the last seq of the invalidation channel, locked by each writer."""

PROPAGATION_BOUND = "propagation_bound_seconds"
"""``meta`` row (schema 3): the installation's propagation bound, recorded at its creation (or
by ``upgrade-store``): no process polls the invalidation channel less often."""


LEDGER_APPLIED = "ledger_applied_seq"
"""``meta`` row (schema 3): the seq of the last ledger entry applied to this store; ``-1``: a
ledger is configured and nothing is applied yet; absent: no ledger was ever configured. Every
transaction that applies journal entries (a shred, a replay, a repair, an outbox flush) locks it
first, so they are serialised and the ledger's sequence follows the store's."""


RETENTION_POLICY = "retention_policy"
"""``meta`` rows (no schema change: any schema from 3 on holds them): the retention policy
recorded in the key store (DESIGN.md, lifecycle rule 8), the signed ``ccvault-retention-policy/v1``
record's canonical JSON cut into rows ``retention_policy/0000``, ``/0001``… of at most 250
characters, under the header row ``retention_policy`` = ``<rows> <SHA-256 hex of the JSON> <ledger
seq, or - while it is in no ledger>`` (empty: nothing recorded). A writer locks the header row
(after ``ledger_applied_seq``) and replaces the rows in its transaction."""


def _bin(n: int) -> sa.types.TypeEngine[bytes]:
    # MariaDB/MySQL cannot index a BLOB without a prefix length: use VARBINARY there.
    return sa.LargeBinary(n).with_variant(mysql.VARBINARY(n), "mysql", "mariadb")


def build_metadata(prefix: str = "ccvault_") -> sa.MetaData:
    md = sa.MetaData()
    sa.Table(
        f"{prefix}meta",
        md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    sa.Table(
        f"{prefix}epochs",
        md,
        sa.Column("epoch_id", _bin(16), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("commitment", _bin(32), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("retired_at", sa.Double),
        sa.Column("destroyed_at", sa.Double),
    )
    sa.Table(
        f"{prefix}epoch_wraps",
        md,
        sa.Column("epoch_id", _bin(16), primary_key=True),
        sa.Column("kms_id", sa.String(191), primary_key=True),
        sa.Column("root_id", sa.String(512), nullable=False),
        sa.Column("wrapped", _bin(4096), nullable=False),
    )
    sa.Table(
        f"{prefix}keys",
        md,
        sa.Column("key_id", _bin(16), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(191)),
        sa.Column("ref", _bin(32)),
        sa.Column("epoch_id", _bin(16)),
        sa.Column("wrapped", _bin(128)),
        sa.Column("commitment", _bin(32)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("destroyed_at", sa.Double),
        sa.Column("uses_reserved", sa.BigInteger, nullable=False, server_default="0"),
        sa.UniqueConstraint("kind", "label", "version", name=f"{prefix}keys_label_uq"),
        sa.Index(f"{prefix}keys_ref_ix", "ref"),
        sa.Index(f"{prefix}keys_epoch_ix", "epoch_id"),
    )
    sa.Table(
        f"{prefix}subject_heads",
        md,
        sa.Column("ref", _bin(32), primary_key=True),
        sa.Column("key_id", _bin(16), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("shredded_at", sa.Double),
        sa.Column("receipt", sa.Text),
        # schema 2: HMAC of (installation, ref, key id, state, current version); NULL only in a
        # row written by a library of schema 1 (read as unauthenticated: fenced)
        sa.Column("mac", _bin(32)),
    )
    # schema 3: the invalidation channel every process polls (DESIGN.md, lifecycle rule 5)
    sa.Table(
        f"{prefix}invalidations",
        md,
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", _bin(32)),  # NULL: every subject (`*`)
        sa.Column("period", _bin(16)),  # NULL: every period (`*`)
        sa.Column("at", sa.Double, nullable=False),
    )
    # schema 3: the erasure journal's side (DESIGN.md, lifecycle rule 3)
    sa.Table(
        f"{prefix}ledger_outbox",
        md,
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),  # the record's format
        sa.Column("receipt_id", sa.String(64)),
        sa.Column("record", sa.Text, nullable=False),  # the signed record as JSON
        sa.Column("at", sa.Double, nullable=False),
    )
    sa.Table(
        f"{prefix}erasures",
        md,
        sa.Column("receipt_id", sa.String(64), primary_key=True),
        sa.Column("ref", _bin(32), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("ledger_seq", sa.BigInteger),  # NULL: not in the ledger (yet)
        sa.Column("completion_seq", sa.BigInteger),  # the completion's entry, once completed
        sa.Column("shredded_at", sa.Double, nullable=False),
    )
    # schema 4: erasures awaiting completion, their subjects sealed (DESIGN.md, lifecycle rule 4)
    sa.Table(
        f"{prefix}erasure_queue",
        md,
        sa.Column("receipt_id", sa.String(64), primary_key=True),
        sa.Column("ref", _bin(32), nullable=False),
        sa.Column("key_id", _bin(16), nullable=False),
        sa.Column("key_version", sa.Integer, nullable=False),
        sa.Column("sealed", sa.LargeBinary, nullable=False),
        sa.Column("due", sa.Double, nullable=False),
        sa.Column("queued_at", sa.Double, nullable=False),
    )
    # schema 5: legal holds (DESIGN.md, lifecycle rules 3 and 8)
    sa.Table(
        f"{prefix}holds",
        md,
        sa.Column("hold_id", sa.String(32), primary_key=True),
        sa.Column("ref", _bin(32), nullable=False),
        sa.Column("legal_case", sa.String(128), nullable=False),  # opaque reference, never PII
        sa.Column("placed_by", sa.String(128), nullable=False),
        sa.Column("placed_at", sa.Double, nullable=False),
        sa.Column("held_until", sa.Double),  # NULL: until released
        sa.Column("ledger_seq", sa.BigInteger),  # the hold's entry
        sa.Column("released_at", sa.Double),  # NULL: not released
        sa.Column("released_by", sa.String(128)),
        sa.Column("override_receipt", sa.String(64)),  # the shred that overrode it
        sa.Column("release_seq", sa.BigInteger),  # the release's or override's entry
        sa.Index(f"{prefix}holds_ref_ix", "ref"),
    )
    return md
