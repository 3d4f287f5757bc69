"""The named figures of ``latest.json``: unit, which benchmark measures them, what they mean.

``REQUIRED`` are the figures issues 3, 4, 5, 13 and 14 name; every one of them is always present in
the JSON, as ``null`` when ccvault does not have the capability yet (with a ``<name>_note``
saying why) or when a peer, a database or a KMS server could not be reached. ``EXTRA`` figures
give context next to them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    bench: str  # the --only name that measures it; "" for capabilities ccvault lacks
    meaning: str
    ratio: bool = False  # drawn on the chart


def _f(name: str, unit: str, bench: str, meaning: str) -> Figure:
    return Figure(name, unit, bench, meaning, ratio=unit == "x")


_KMS_BACKENDS = (
    ("local", "LocalKms (master-key file)"),
    ("aws", "AwsKms on moto's KMS server over HTTP"),
    ("openbao", "VaultTransitKms on an OpenBao dev server over HTTP"),
)

REQUIRED: tuple[Figure, ...] = (
    _f(
        "field_roundtrip_ratio_vs_aesgcm",
        "x",
        "field",
        "ccvault encrypt+decrypt of a 100-byte value, one warm subject, divided by raw AES-GCM",
    ),
    _f(
        "field_roundtrip_ratio_vs_aesgcm_20k",
        "x",
        "field",
        "the same over 20,000 warm subjects (cycling), divided by raw AES-GCM",
    ),
    _f("field_roundtrip_us", "µs", "field", "ccvault round trip, one warm subject"),
    _f(
        "peer_sqlalchemy_utils_roundtrip_us",
        "µs",
        "field",
        "sqlalchemy-utils StringEncryptedType(AesGcmEngine): process_bind_param + "
        "process_result_value",
    ),
    _f(
        "peer_tink_envelope_roundtrip_us",
        "µs",
        "field",
        "Tink KmsEnvelopeAead: a new AES256_GCM data key per value, wrapped by a KMS AEAD",
    ),
    _f(
        "peer_esdk_roundtrip_us",
        "µs",
        "field",
        "AWS Encryption SDK, raw AES wrapping key, committing suite without signing",
    ),
    _f(
        "orm_insert_ratio_sqlite",
        "x",
        "orm",
        "ORM insert of all rows (orm_rows) into ccvault Encrypted columns, customers' keys "
        "existing and cached (warm), vs the plaintext table (SQLite)",
    ),
    _f(
        "orm_select_first_ratio_sqlite",
        "x",
        "orm",
        "first read: ORM select of all rows with a fresh session, every attribute read, the "
        "first read of rows whose keys the same repeat created (keys warm in the cache, never "
        "read before), vs the plaintext table's first read (SQLite)",
    ),
    _f(
        "orm_select_steady_ratio_sqlite",
        "x",
        "orm",
        "steady state: the same select again right after the first read (fresh session, keys "
        "warm and already read once), vs the plaintext table's second read (SQLite)",
    ),
    _f(
        "orm_first_write_ratio_sqlite",
        "x",
        "orm",
        "ORM insert of all rows for new customers (a key created per customer) vs the "
        "plaintext insert (SQLite)",
    ),
    _f("orm_insert_ratio_postgres", "x", "orm", "as orm_insert_ratio_sqlite, on PostgreSQL"),
    _f(
        "orm_select_first_ratio_postgres",
        "x",
        "orm",
        "as orm_select_first_ratio_sqlite, on PostgreSQL (text result format: bytea as hex)",
    ),
    _f(
        "orm_select_steady_ratio_postgres",
        "x",
        "orm",
        "as orm_select_steady_ratio_sqlite, on PostgreSQL (text result format: bytea as hex)",
    ),
    *(
        _f(
            f"orm_{op}_added_vs_floor_{db}",
            "x",
            "orm",
            f"{what}: ccvault's added time over plaintext divided by the floor's, (ccvault - "
            f"plaintext) / (floor - plaintext), per repeat ({label})",
        )
        for db, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL"))
        for op, what in (
            ("insert", "insert, keys warm"),
            ("select_first", "select, first read"),
            ("select_steady", "select, steady state"),
        )
    ),
    _f(
        "peer_sqlalchemy_utils_select_ratio_postgres",
        "x",
        "orm",
        "first read: ORM select of all rows (orm_rows), 4 sqlalchemy-utils encrypted columns, "
        "vs the same table in plaintext, in the same pass as orm_select_first_ratio_postgres "
        "(PostgreSQL)",
    ),
    _f(
        "kms_calls_cold_10k_rows",
        "calls",
        "cold",
        "KMS wrap+unwrap calls of a fresh vault (construction included) reading back 10,000 "
        "values of 2,000 customers",
    ),
    _f(
        "keystore_roundtrips_cold_10k_rows",
        "statements",
        "cold",
        "SQL statements the fresh vault sends to the key store during that cold read "
        "(construction excluded)",
    ),
    _f(
        "keystore_roundtrips_cold_10k_rows_decrypt_many",
        "statements",
        "cold",
        "the same cold read as one vault.decrypt_many call: key-store statements (target <= 10)",
    ),
    _f(
        "shred_ms_p50_1m",
        "ms",
        "shred",
        "median vault.shred latency by a fresh vault (cold caches) on a SQLite key store of "
        "1,000,000 subjects (see shred_ms_p50_1m_population)",
    ),
    _f(
        "shred_ms_p50_10k",
        "ms",
        "shred",
        "median vault.shred latency by a fresh vault (cold caches) on a SQLite key store of "
        "10,000 subjects",
    ),
    _f(
        "shred_ms_p50_10k_postgres_ledger",
        "ms",
        "shred",
        "median vault.shred latency by a fresh vault (cold caches) on a PostgreSQL key store of "
        "10,000 subjects (each with its customer row), with the SQL erasure ledger on the same "
        "server (target <= 20 ms)",
    ),
    _f(
        "shred_ms_p50_large_postgres_ledger",
        "ms",
        "shred",
        "the same on that key store grown to 1,000,000 subjects, each with its customer row "
        "(see shred_ms_p50_large_postgres_ledger_population, the population reached, and its "
        "note; the issue asks flat)",
    ),
    _f(
        "shred_many_s_10k_postgres_ledger",
        "s",
        "shred_many",
        "one vault.shred_many call of 10,000 subjects on a PostgreSQL key store with the SQL "
        "erasure ledger on the same server (target <= 20 s)",
    ),
    _f(
        "blind_index_lookup_ratio",
        "x",
        "orm",
        "ORM lookup of one row by phone among orm_lookup_population customers through the "
        "blind index (decrypted, every key warm), vs the plaintext indexed column (SQLite)",
    ),
    *(
        _f(
            f"kms_calls_{phase}_{backend}",
            "calls",
            "kms",
            f"KMS calls of a fresh process that {what} 10,000 rows of 2,000 customers, {label}",
        )
        for backend, label in _KMS_BACKENDS
        for phase, what in (("write", "writes"), ("read", "reads back"))
    ),
    *(
        Figure(  # not charted: a throughput ratio below 1, not an overhead
            f"rows_per_s_{phase}_ratio_{backend}_vs_local",
            "x",
            "kms",
            f"rows/s of that fresh {doing} process, {label}, divided by the local backend's",
        )
        for backend, label in _KMS_BACKENDS[1:]
        for phase, doing in (("read", "reading"), ("write", "writing"))
    ),
    _f(
        "propagation_poll_ms_p50_sqlite",
        "ms",
        "propagation",
        "shred() returned -> a warm reader in another process refuses the value: the poll "
        "(installation bound 1 s, SQLite key store)",
    ),
    _f(
        "propagation_poll_ms_p50_postgres",
        "ms",
        "propagation",
        "as propagation_poll_ms_p50_sqlite, PostgreSQL key store with the listener off",
    ),
    _f(
        "propagation_notify_ms_p50_postgres",
        "ms",
        "propagation",
        "the same delay through the listener's LISTEN/NOTIFY alone (installation bound 30 s, "
        "PostgreSQL)",
    ),
    _f("stream_encrypt_gbps", "GB/s", "", "streaming encryption throughput"),
    _f("stream_rss_growth_mib", "MiB", "", "resident memory growth while streaming"),
    _f(
        "retention_expire_1m_s",
        "s",
        "retention",
        "one vault.enforce_retention() call expiring a retention period that holds 1,000,000 "
        "encrypted values, PostgreSQL key store with the SQL ledger (target < 1 s)",
    ),
    _f(
        "retention_expire_1m_data_rows_touched",
        "rows",
        "retention",
        "rows of the application table read or written (and scans of it) during that call, "
        "from pg_stat_user_tables (target 0)",
    ),
    _f(
        "retention_expire_1m_held_10k_s",
        "s",
        "retention",
        "the same with 10,000 held subjects (a held key each made before the period goes)",
    ),
    _f(
        "retention_expire_1m_held_10k_data_rows_touched",
        "rows",
        "retention",
        "rows of the application table read or written during that call (target 0)",
    ),
)

EXTRA: tuple[Figure, ...] = (
    _f("aesgcm_roundtrip_us", "µs", "field", "baseline: raw AES-GCM round trip"),
    _f("field_roundtrip_us_20k", "µs", "field", "ccvault round trip over 20,000 warm subjects"),
    _f("peer_tink_aead_roundtrip_us", "µs", "field", "Tink AEAD from an AES256_GCM keyset"),
    _f(
        "peer_esdk_default_roundtrip_us",
        "µs",
        "field",
        "AWS Encryption SDK, raw AES wrapping key, default suite (signed)",
    ),
    _f("peer_sqlalchemy_utils_ratio_vs_aesgcm", "x", "field", "sqlalchemy-utils vs raw AES-GCM"),
    _f("peer_tink_aead_ratio_vs_aesgcm", "x", "field", "Tink AEAD vs raw AES-GCM"),
    _f("peer_tink_envelope_ratio_vs_aesgcm", "x", "field", "Tink KmsEnvelopeAead vs raw AES-GCM"),
    _f("peer_esdk_ratio_vs_aesgcm", "x", "field", "ESDK committing, unsigned vs raw AES-GCM"),
    _f("peer_esdk_default_ratio_vs_aesgcm", "x", "field", "ESDK default suite vs raw AES-GCM"),
    _f(
        "orm_first_write_ratio_postgres",
        "x",
        "orm",
        "as orm_first_write_ratio_sqlite, on PostgreSQL",
    ),
    _f(
        "orm_first_write_ratio_gc_sqlite",
        "x",
        "orm",
        "as orm_first_write_ratio_sqlite with Python's cyclic GC on during both inserts, as in an "
        "application (every other timing keeps it off, as timeit does): the collections new "
        "objects set off, each full one visiting every object the process keeps, the vault's "
        "cached keys among them; measured last, after the lookups, with the keys of every "
        "customer before it cached (SQLite)",
    ),
    _f(
        "orm_first_write_ratio_gc_postgres",
        "x",
        "orm",
        "as orm_first_write_ratio_gc_sqlite, on PostgreSQL",
    ),
    _f(
        "blind_index_lookup_ratio_postgres",
        "x",
        "orm",
        "as blind_index_lookup_ratio, on PostgreSQL",
    ),
    _f(
        "peer_sqlalchemy_utils_lookup_ratio_sqlite",
        "x",
        "orm",
        "lookup by phone, sqlalchemy-utils AesEngine (deterministic) vs plaintext (SQLite)",
    ),
    _f(
        "peer_sqlalchemy_utils_lookup_ratio_postgres",
        "x",
        "orm",
        "lookup by phone, sqlalchemy-utils AesEngine (deterministic) vs plaintext (PG)",
    ),
    _f(
        "peer_sqlalchemy_utils_insert_ratio_postgres",
        "x",
        "orm",
        "ORM insert of all rows, sqlalchemy-utils columns vs plaintext (PostgreSQL)",
    ),
    _f(
        "peer_sqlalchemy_utils_select_ratio_sqlite",
        "x",
        "orm",
        "first read: ORM select of all rows, sqlalchemy-utils columns vs plaintext (SQLite)",
    ),
    _f(
        "peer_sqlalchemy_utils_insert_ratio_sqlite",
        "x",
        "orm",
        "ORM insert of all rows, sqlalchemy-utils columns vs plaintext (SQLite)",
    ),
    *(
        _f(
            f"peer_sqlalchemy_utils_select_steady_ratio_{db}",
            "x",
            "orm",
            f"steady state: the same select again, sqlalchemy-utils columns vs plaintext ({label})",
        )
        for db, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL"))
    ),
    *(
        _f(
            f"orm_{op}_{floor}_ratio_{db}",
            "x",
            "orm",
            f"{floor.replace('_', ' ')}: plaintext {op}{when} plus the bare AES-GCM {calls} (a key "
            f"per customer{how}), vs plaintext: the least any per-value design adds ({label})",
        )
        for db, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL"))
        for op, when, calls in (
            ("insert", "", "encrypts and blind-index HMACs of its values"),
            ("select", " (first read)", "decrypts of its values"),
        )
        for floor, how in (
            ("floor", ", key objects made in row order, reused in that order, inputs prepared"),
            (
                "scattered_floor",
                ", key objects scattered in memory in a dict, looked up once a row; values "
                "sliced on select",
            ),
        )
    ),
    *(
        _f(
            f"orm_{op}_added_vs_scattered_floor_{db}",
            "x",
            "orm",
            f"as orm_{op}_added_vs_floor_{db}, against the scattered floor",
        )
        for db in ("sqlite", "postgres")
        for op in ("insert", "select_first", "select_steady")
    ),
    _f(
        "orm_select_steady_ratio_postgres_binary",
        "x",
        "orm",
        "steady state, PostgreSQL binary result format on both sides (psycopg cursors with "
        "format BINARY: bytea as raw bytes): ccvault select vs plaintext select",
    ),
    *(
        _f(
            f"orm_select_steady_{floor}_ratio_{db}",
            "x",
            "orm",
            f"{floor.replace('_', ' ')} of the steady-state select: plaintext select (steady "
            f"state) plus the same calls as orm_select_{floor}_ratio_sqlite{fmt}, vs plaintext "
            f"({label})",
        )
        for db, label, fmt in (
            ("sqlite", "SQLite", ""),
            ("postgres", "PostgreSQL", ""),
            ("postgres_binary", "PostgreSQL", ", both in the binary result format"),
        )
        for floor in ("floor", "scattered_floor")
    ),
    _f(
        "orm_select_steady_added_vs_floor_postgres_binary",
        "x",
        "orm",
        "as orm_select_steady_added_vs_floor_postgres, both reads in the binary result format",
    ),
    Figure(  # text vs binary of the same table: not an overhead of ccvault
        "plaintext_select_binary_vs_text_ratio_postgres",
        "x",
        "orm",
        "plaintext select, binary result format divided by text format (steady state)",
    ),
    Figure(
        "orm_select_binary_vs_text_ratio_postgres",
        "x",
        "orm",
        "ccvault select, binary result format divided by text format (steady state)",
    ),
    *(
        _f(
            f"orm_{floor}_{op}_ms_{db}",
            "ms",
            "orm",
            f"plaintext {op}{when} + the bare crypto calls, {what} ({label})",
        )
        for db, label in (("sqlite", "SQLite"), ("postgres", "PG"))
        for op, when in (("insert", ""), ("select", " (first read)"))
        for floor, what in (("floor", "keys in row order"), ("scattered_floor", "keys scattered"))
    ),
    _f("plaintext_insert_ms_sqlite", "ms", "orm", "baseline: plaintext ORM insert (SQLite)"),
    _f("orm_insert_ms_sqlite", "ms", "orm", "ccvault ORM insert, keys cached (SQLite)"),
    _f("orm_first_write_ms_sqlite", "ms", "orm", "ccvault ORM insert, new customers (SQLite)"),
    _f("plaintext_lookup_us_sqlite", "µs", "orm", "baseline: plaintext lookup by phone (SQLite)"),
    _f("orm_lookup_us_sqlite", "µs", "orm", "ccvault blind-index lookup by phone (SQLite)"),
    *(
        Figure(  # against ccvault's own columns, not plaintext: not on the chart
            f"orm_insert_retention_ratio_{db}",
            "x",
            "orm",
            "ORM insert of all rows into 4 Encrypted(retention=) columns (suite 2, a period key "
            f"a customer and month) vs the same columns without retention= ({label}); reported, "
            "not gated",
        )
        for db, label in (("sqlite", "SQLite"), ("postgres", "PG"))
    ),
    *(
        _f(
            f"orm_insert_{kind}_ms_{db}",
            "ms",
            "orm",
            f"ccvault ORM insert, 4 unsearchable columns{extra}, keys cached ({label})",
        )
        for db, label in (("sqlite", "SQLite"), ("postgres", "PG"))
        for kind, extra in (("unsearchable", ""), ("retention", " with retention=calls"))
    ),
    _f("plaintext_insert_ms_postgres", "ms", "orm", "baseline: plaintext ORM insert (PG)"),
    _f("orm_insert_ms_postgres", "ms", "orm", "ccvault ORM insert, keys cached (PG)"),
    _f("orm_first_write_ms_postgres", "ms", "orm", "ccvault ORM insert, new customers (PG)"),
    *(
        _f(name.format(db=db), "ms", "orm", f"{meaning} ({label})")
        for db, label in (("sqlite", "SQLite"), ("postgres", "PG"))
        for name, meaning in (
            ("plaintext_select_ms_{db}", "baseline: plaintext ORM select, first read"),
            ("plaintext_select_steady_ms_{db}", "baseline: plaintext ORM select, steady state"),
            ("orm_select_first_ms_{db}", "ccvault ORM select, first read"),
            ("orm_select_steady_ms_{db}", "ccvault ORM select, steady state"),
            ("peer_sqlalchemy_utils_insert_ms_{db}", "sqlalchemy-utils ORM insert"),
            ("peer_sqlalchemy_utils_select_ms_{db}", "sqlalchemy-utils ORM select, first read"),
        )
    ),
    _f(
        "plaintext_select_ms_postgres_binary",
        "ms",
        "orm",
        "baseline: plaintext ORM select, steady state, binary result format (PG)",
    ),
    _f(
        "orm_select_ms_postgres_binary",
        "ms",
        "orm",
        "ccvault ORM select, steady state, binary result format (PG)",
    ),
    _f("plaintext_lookup_us_postgres", "µs", "orm", "baseline: plaintext lookup by phone (PG)"),
    _f("orm_lookup_us_postgres", "µs", "orm", "ccvault blind-index lookup by phone (PG)"),
    _f(
        "cold_read_10k_rows_ms",
        "ms",
        "cold",
        "wall time of the cold read (fresh vault, 10,000 decrypts of 2,000 customers)",
    ),
    _f(
        "kms_calls_cold_10k_rows_orm",
        "calls",
        "cold",
        "the same cold read through the ORM (vault attached to the engine): KMS calls",
    ),
    _f(
        "keystore_roundtrips_cold_10k_rows_orm",
        "statements",
        "cold",
        "the same cold read through the ORM: key-store statements (batched by the read hook)",
    ),
    _f("cold_read_10k_rows_orm_ms", "ms", "cold", "wall time of the cold ORM read"),
    _f(
        "kms_calls_cold_10k_rows_decrypt_many",
        "calls",
        "cold",
        "the same cold read as one vault.decrypt_many call: KMS calls (construction included)",
    ),
    _f(
        "cold_read_10k_rows_decrypt_many_ms",
        "ms",
        "cold",
        "wall time of the cold read as one vault.decrypt_many call",
    ),
    _f(
        "keystore_roundtrips_cold_10k_rows_after_warm",
        "statements",
        "cold",
        "the same cold read preceded by vault.warm(customers) (batched key loads)",
    ),
    _f(
        "keystore_write_txn_ms_p50_10k",
        "ms",
        "shred",
        "baseline: a one-row UPDATE transaction on the same 10k key store",
    ),
    _f(
        "shred_ms_p50_10k_postgres",
        "ms",
        "shred",
        "median vault.shred latency on the PostgreSQL key store of 10,000 subjects, no ledger",
    ),
    _f(
        "keystore_write_txn_ms_p50_10k_postgres",
        "ms",
        "shred",
        "baseline: a one-row UPDATE transaction on that PostgreSQL key store",
    ),
    _f(
        "keystore_write_txn_ms_p50_large_postgres",
        "ms",
        "shred",
        "baseline: a one-row UPDATE transaction on the grown PostgreSQL key store",
    ),
    _f(
        "keystore_write_txn_ms_p50_1m",
        "ms",
        "shred",
        "baseline: a one-row UPDATE transaction on the same 1M key store",
    ),
    *(
        _f(
            f"propagation_{kind}_ms_max_{db}",
            "ms",
            "propagation",
            f"the longest of the propagation_{kind}_ms_p50_{db} samples (the bound is 1 s for "
            "the poll)",
        )
        for kind, db in (("poll", "sqlite"), ("poll", "postgres"), ("notify", "postgres"))
    ),
    _f(
        "shred_ms_p50_10k_warm_cache",
        "ms",
        "shred",
        "vault.shred by a vault that holds all 10,000 subjects' keys in its cache",
    ),
)

EXTRA += (
    _f(
        "shred_sequential_s_10k_postgres_ledger",
        "s",
        "shred_many",
        "baseline: the same number of subjects shredded one vault.shred call at a time, same "
        "key store and ledger, same run",
    ),
    Figure(  # a speedup, not a cost: not drawn beside the ratios to a baseline
        "shred_many_speedup_vs_sequential",
        "x",
        "shred_many",
        "shred_sequential_s_10k_postgres_ledger divided by shred_many_s_10k_postgres_ledger",
    ),
    _f(
        "shred_many_ms_per_subject_postgres_ledger",
        "ms",
        "shred_many",
        "shred_many_s_10k_postgres_ledger per subject",
    ),
    _f(
        "shred_sequential_ms_p50_postgres_ledger",
        "ms",
        "shred_many",
        "median vault.shred latency of the baseline's calls",
    ),
)

EXTRA += tuple(
    _f(name, unit, "kms", f"{meaning}, {label}")
    for backend, label in _KMS_BACKENDS
    for name, unit, meaning in (
        (f"rows_per_s_write_{backend}", "rows/s", "fresh writing process"),
        (f"rows_per_s_read_{backend}", "rows/s", "fresh reading process"),
        (
            f"naive_rows_per_s_{backend}",
            "rows/s",
            "naive per-row envelope (a KMS-wrapped data key per value), write + read",
        ),
        (
            f"naive_kms_calls_per_row_{backend}",
            "calls",
            "naive per-row envelope: KMS calls per row",
        ),
    )
)

EXTRA += (
    _f(
        "retention_expire_held_keys_made",
        "keys",
        "retention",
        "held keys the held scenario made (held subjects x their key versions x 1 period)",
    ),
)

EXTRA += tuple(
    _f(
        f"shred_ms_p50_ledger_{sink}_postgres",
        "ms",
        "ledger",
        f"median vault.shred on a PostgreSQL key store of 5,000 subjects, {what}",
    )
    for sink, what in (
        ("none", "no erasure ledger"),
        ("sql", "SQL ledger in another schema of the same database"),
        ("jsonl", "JSONL ledger (a local file: flock, fsync)"),
        ("s3", "S3 ledger on moto's S3 server over HTTP on loopback (a floor for a real bucket)"),
    )
)

EXTRA += tuple(
    _f(name.format(db=db), unit, "import", f"{meaning.format(db=db)} ({label} key store)")
    for db, label in (("sqlite", "SQLite"), ("postgres", "PostgreSQL"))
    for name, unit, meaning in (
        (
            "import_200k_encrypt_many_s_{db}",
            "s",
            "200,000 new customers (5,000 with --quick), one value each, sealed by one "
            "vault.encrypt_many call: keys created 2,000 per key-store transaction",
        ),
        (
            "import_200k_warm_encrypt_s_{db}",
            "s",
            "the same import through vault.encrypt per value after vault.warm of each 5,000 "
            "customers (the documented batching)",
        ),
        (
            "import_200k_encrypt_s_{db}",
            "s",
            "the same import through vault.encrypt per value alone: null, only a sample is "
            "timed (import_us_per_customer_encrypt_{db}); never extrapolated",
        ),
        (
            "import_us_per_customer_encrypt_many_{db}",
            "µs",
            "import_200k_encrypt_many_s_{db} per customer",
        ),
        (
            "import_us_per_customer_warm_encrypt_{db}",
            "µs",
            "import_200k_warm_encrypt_s_{db} per customer",
        ),
        (
            "import_us_per_customer_encrypt_{db}",
            "µs",
            "vault.encrypt of a new customer's value alone (one key-store read and one "
            "key-creation transaction each), timed on a sample of 5,000 customers (300 with "
            "--quick)",
        ),
    )
)

ALL: tuple[Figure, ...] = REQUIRED + EXTRA
BY_NAME: dict[str, Figure] = {f.name: f for f in ALL}
BENCHES: tuple[str, ...] = (
    "field",
    "cold",
    "orm",
    "kms",
    "propagation",
    "ledger",
    "shred_many",
    "retention",
    "import",
    "shred",
)  # shred last: it fills the time left

NOT_YET = {
    "stream_encrypt_gbps": "ccvault has no streaming encryption yet",
    "stream_rss_growth_mib": "ccvault has no streaming encryption yet",
}
"""Capabilities ccvault does not have: their figures are null, never an estimate."""
