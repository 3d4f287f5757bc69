"""Crypto-shredding: :class:`Erasure` fences a subject, destroys its keys and signs the receipt;
:class:`Journal` keeps the signed, hash-chained, gap-free journal of erasures in a ledger sink;
a shred's dry run (:meth:`Erasure.preview`) reports what it would make unreadable;
:class:`ShredMany` shreds a queue of subjects 500 per transaction, one :class:`ShredResult` each;
:class:`Holds` places and releases legal holds (signed journal entries; a held subject's shred is
refused or overridden inside its transaction) and reports them as :class:`Hold`;
:class:`RetentionPolicies` records the retention policy in the key store (a signed
:class:`RetentionPolicyRecord`, ledger first when there is a ledger), reports it as
:class:`RecordedPolicy` and a recording as :class:`PolicyChange`, and gives the policy in force;
:class:`LedgerLink` ties the two (ledger first, replay after a restore, repair, the outbox of
``best-effort`` mode) and :class:`Reconciler` does the replaying, repairing and checking.

:class:`Enforcer` enforces retention (period secrets destroyed when their time has come, held
subjects' keys preserved first, a signed :class:`RetentionReportRecord` per transaction, a
:class:`RetentionReport` returned) and replays its reports after a restore.

:class:`ErasureQueue` keeps the subjects of erasures awaiting completion sealed, and
:class:`Completer` completes them (phase 2, lifecycle rule 4 of the product contract: the
second sweep and the signed completion record). The subject export reads tables, so it lives
in the SQLAlchemy integration (``ccvault.sqlalchemy._export``) and takes the stored receipt
from :meth:`Erasure.receipt`.
"""

from ._chain import LedgerProblem, LedgerReport
from ._complete import Completer
from ._enforce import Enforcer, PolicyAt, RetentionReport
from ._hold_records import Hold, HoldOverrideRecord, HoldRecord, HoldReleaseRecord
from ._holds import HoldId, Holds
from ._journal import Journal, read_entry, verify_ledger
from ._ledger import LedgerSink, StoredEntry, TornWrite, ledger_from_url
from ._ledger_file import JsonlLedger
from ._ledger_s3 import S3Ledger
from ._ledger_sql import SqlLedger
from ._link import LedgerLink, check_new_installation
from ._many import ShredMany, ShredResult
from ._policies import RetentionPolicies
from ._policy_records import (
    PolicyChange,
    RecordedPolicy,
    RetentionPolicyRecord,
    policy_mismatch,
)
from ._preview import EnginePreview, PreviewColumn, ShredPreview, SkippedTable, TablePreview
from ._queue import ErasureQueue
from ._reconcile import Reconciler
from ._records import (
    CompletionRecord,
    GenesisRecord,
    JournalEntry,
    RetentionReportRecord,
    SignedRecord,
    register_record_type,
)
from ._shred import Erasure
from ._status import (
    CompletionReport,
    ErasureCheck,
    ErasureProblem,
    ErasureStatus,
    Reconciliation,
    RepairRecord,
)

__all__ = [
    "Completer",
    "CompletionRecord",
    "CompletionReport",
    "Enforcer",
    "EnginePreview",
    "Erasure",
    "ErasureCheck",
    "ErasureProblem",
    "ErasureQueue",
    "ErasureStatus",
    "GenesisRecord",
    "Hold",
    "HoldId",
    "HoldOverrideRecord",
    "HoldRecord",
    "HoldReleaseRecord",
    "Holds",
    "Journal",
    "JournalEntry",
    "JsonlLedger",
    "LedgerLink",
    "LedgerProblem",
    "LedgerReport",
    "LedgerSink",
    "PolicyAt",
    "PolicyChange",
    "PreviewColumn",
    "Reconciler",
    "Reconciliation",
    "RecordedPolicy",
    "RepairRecord",
    "RetentionPolicies",
    "RetentionPolicyRecord",
    "RetentionReport",
    "RetentionReportRecord",
    "S3Ledger",
    "ShredMany",
    "ShredPreview",
    "ShredResult",
    "SignedRecord",
    "SkippedTable",
    "SqlLedger",
    "StoredEntry",
    "TablePreview",
    "TornWrite",
    "check_new_installation",
    "ledger_from_url",
    "policy_mismatch",
    "read_entry",
    "register_record_type",
    "verify_ledger",
]
