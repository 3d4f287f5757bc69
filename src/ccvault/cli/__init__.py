"""The ``ccvault`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ccvault", description="Encrypted, erasable contact-center customer data."
    )
    parser.add_argument("--version", action="version", version=f"ccvault {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo", help="run the embedded demo in a temporary folder (ignores CCVAULT_* settings)"
    )
    demo.add_argument("--customers", type=int, default=3000, help="synthetic customers (3000)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the synthetic data")
    demo.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir)")
    admin = {}
    for name, text in (
        (
            "status",
            "list the epochs of the configured vault, their keys, due dates and KMS roots "
            "(read-only)",
        ),
        (
            "rotate-epoch",
            "start a new epoch and re-wrap every live key under it, or finish an interrupted "
            "rotation (admin)",
        ),
        (
            "destroy-epochs",
            "destroy epochs retired past the backup window, and their roots (admin)",
        ),
        ("add-kms-wraps", "wrap every live epoch under MultiKms members lacking a wrap (admin)"),
        (
            "upgrade-store",
            "bring a key store written by an older ccvault to this version's schema "
            "(idempotent; admin)",
        ),
        (
            "verify-heads",
            "check every subject head's MAC and find key rows without a head; exit status 3 "
            "when any ref is treated as shredded for a broken fence (read-only)",
        ),
        (
            "verify-erasures",
            "verify the erasure ledger's chain and check the key store against it: entries not "
            "applied, receipts missing from the ledger, entries waiting in the outbox; exit "
            "status 3 on any problem (read-only)",
        ),
        (
            "reconcile-erasures",
            "replay ledger entries into the key store, re-add receipts the ledger lacks after a "
            "signed repair entry, append the outbox; then verify (exit status 3 on a problem "
            "left; admin)",
        ),
    ):
        admin[name] = sub.add_parser(
            name, help=text, description=f"{text}. Configured by CCVAULT_* variables."
        )
    for name in ("verify-erasures", "reconcile-erasures"):
        admin[name].add_argument(
            "--format", choices=("json", "text"), default="json", help="output format (json)"
        )
    admin["destroy-epochs"].add_argument(
        "--dry-run", action="store_true", help="print what would be destroyed, change nothing"
    )
    admin["destroy-epochs"].add_argument(
        "--accept-unreadable",
        action="store_true",
        help="also destroy due epochs that hold quarantined keys: their values are lost for good "
        "(the decision is recorded in the key store)",
    )
    scrub = sub.add_parser(
        "scrub",
        help="read every encrypted value of the application's models; report unreadable ones",
        description="Read every encrypted value of the models' tables in batches (read-only) and "
        "print a JSON report: per column the values readable, shredded, expired and unreadable, "
        "and each "
        "unreadable value's table, column and primary key. Exit status 0: all readable; "
        "3: unreadable values found; 1: an error. The vault is configured by CCVAULT_* variables.",
    )
    _models_option(scrub)
    scrub.add_argument(
        "--database-url", required=True, help="SQLAlchemy URL of the application database"
    )
    scrub.add_argument("--batch", type=int, default=1000, help="rows per batch (1000)")
    data_map = sub.add_parser(
        "data-map",
        help="list every table and column of the models holding customer data (read-only)",
        description="Print the data map of the models: every table with encrypted columns and "
        "every plaintext table registered as personal (a models module may define "
        "register_personal_tables(vault), called with the vault opened here), each column's "
        "role, context label and searchable form, and warnings: tables outside the map with a "
        "foreign key to a subject column, searchable tables whose subject column has no index. "
        "The vault is configured by CCVAULT_* variables and opened read-only.",
    )
    export = sub.add_parser(
        "export-subject",
        help="print everything the data map holds about one customer as JSON (read-only)",
        description="Print the subject export (GDPR Art. 15/20) of SUBJECT: its rows in every "
        "table of the data map, encrypted columns decrypted, its erasure receipt if shredded, "
        "and the scope of what was and was not searched. Read-only; the vault is configured by "
        "CCVAULT_* variables.",
    )
    complete = sub.add_parser(
        "complete-erasures",
        help="complete the erasures whose propagation bound has passed (cron-safe, idempotent)",
        description="Complete the erasures whose propagation bound has passed: sweep the blind "
        "indexes of each shredded customer again in the database of --database-url, for the "
        "tables of --models, and append a signed completion record to the erasure ledger. "
        "Erasures not due yet wait; those that cannot be completed stay queued. Prints the "
        "report as JSON. Exit status 0; 3: due erasures were left incomplete or lapsed (named "
        "on stderr); 1: an error. The vault is configured by CCVAULT_* variables (a ledger is "
        "needed).",
    )
    status = sub.add_parser(
        "erasure-status",
        help="where one erasure stands: destroyed, completed or legacy (read-only)",
        description="Print, as JSON, the status of the erasure whose receipt id is RECEIPT_ID: "
        "its phase (destroyed, completed or legacy), whether its receipt is in the ledger and "
        "at which seq, and the seq of its completion record. Exit status 1 for a receipt id "
        "the installation does not know. The vault is configured by CCVAULT_* variables and "
        "opened read-only.",
    )
    status.add_argument("receipt_id", metavar="RECEIPT_ID", help="the receipt's receipt_id")
    for command in (data_map, export, complete):
        _models_option(command)
    complete.add_argument(
        "--database-url", required=True, help="SQLAlchemy URL of the application database"
    )
    data_map.add_argument(
        "--format", choices=("json", "markdown"), default="json", help="output format (json)"
    )
    export.add_argument(
        "--database-url", required=True, help="SQLAlchemy URL of the application database"
    )
    export.add_argument("subject", metavar="SUBJECT", help="the customer's id (subject)")
    shred = sub.add_parser(
        "shred",
        help="shred one customer and print the signed receipt; --dry-run prints what it would "
        "make unreadable and changes nothing",
        description="Shred SUBJECT: destroy its keys, so its values read as SHREDDED (in "
        "running processes once their cache_ttl has passed), and print the signed erasure "
        "receipt as JSON. A customer under an active legal hold is refused (exit status 1, "
        "nothing destroyed) unless --override-hold. Blind indexes are swept only in the "
        "database of --database-url, for the tables of --models: without them this process "
        "attaches no database and sweeps nothing (the output says so; repeat the shred where "
        "the models are). Exit status 0; 3: keys destroyed, the sweep failed for a table (run "
        "again); 1: an error. --dry-run opens the vault read-only, writes nothing and prints "
        "the keys, tables, columns and row counts the shred would make unreadable. The vault "
        "is configured by CCVAULT_* variables.",
    )
    shred.add_argument(
        "--dry-run", action="store_true", help="print what would be made unreadable, change nothing"
    )
    _override_options(shred)
    _sweep_options(shred)
    shred.add_argument("subject", metavar="SUBJECT", help="the customer's id (subject)")
    many = sub.add_parser(
        "shred-many",
        help="shred every customer a file lists (one per line) and print one result per line",
        description="Shred every subject of FILE (one per line; blank lines and lines starting "
        "with # are skipped; '-' reads standard input), 500 per key-store transaction and "
        "ledger append, and print JSON: a summary and, per subject, its line number, outcome "
        "(shredded, already_shredded, held, error), receipt id, hold ids, error and sweep "
        "problem — never the subject. A customer under an active legal hold is left out "
        "(held) unless --override-hold. One subject's error never stops the others; an "
        "unreachable strict ledger stops the rest (nothing destroyed for them). Blind indexes "
        "are swept only in the database of --database-url, for the tables of --models. Exit "
        "status 0; 3: some subject is held, has an error or an incomplete sweep (named by line "
        "on stderr; run the file again); 1: an error. The vault is configured by CCVAULT_* "
        "variables.",
    )
    many.add_argument(
        "--from", dest="path", required=True, metavar="FILE", help="the subjects, one per line"
    )
    _override_options(many)
    _sweep_options(many)
    hold = sub.add_parser(
        "hold",
        help="place a legal hold on one customer: its shred is refused until it is released",
        description="Place a legal hold on SUBJECT and print its id and the subject's ref as "
        "JSON: shred and shred-many refuse the subject (nothing destroyed) while any of its "
        "holds is active, unless --override-hold. The hold is a signed entry of the erasure "
        "ledger (a ledger is needed). Exit status 0; 1: an error (a shredded subject, no "
        "ledger, a bad --case, --by or --until), nothing placed. The vault is configured by "
        "CCVAULT_* variables.",
    )
    hold.add_argument("subject", metavar="SUBJECT", help="the customer's id (subject)")
    hold.add_argument(
        "--case",
        required=True,
        help="an opaque reference of the matter (case or ticket number), never personal data; "
        "1 to 128 printable characters",
    )
    hold.add_argument("--by", required=True, help="who places the hold (1 to 128 characters)")
    hold.add_argument(
        "--until",
        metavar="ISO",
        help="when the hold lapses by itself: an ISO 8601 date-time with its offset "
        "(2031-06-30T00:00:00Z); default: until released",
    )
    release = sub.add_parser(
        "release",
        help="release a legal hold",
        description="Release the legal hold HOLD_ID (a signed entry of the erasure ledger) and "
        "print it as JSON; the customer stays held while another of its holds is active. A hold "
        "released already is left as it is (exit status 0). Exit status 1: an unknown hold id "
        "or another error. The vault is configured by CCVAULT_* variables.",
    )
    release.add_argument("hold_id", metavar="HOLD_ID", help="the id `ccvault hold` printed")
    release.add_argument("--by", required=True, help="who releases it (1 to 128 characters)")
    holds = sub.add_parser(
        "holds",
        help="list the active legal holds, of one customer or of all (read-only)",
        description="Print the legal holds as JSON, oldest first: of SUBJECT, or of every "
        "customer; active ones only unless --all (released, overridden by a shred, or past "
        "their --until). Each names the customer by its ref, never by its id. The vault is "
        "configured by CCVAULT_* variables and opened read-only.",
    )
    holds.add_argument("subject", metavar="SUBJECT", nargs="?", help="the customer's id")
    holds.add_argument(
        "--all", dest="all_holds", action="store_true", help="released and lapsed holds too"
    )
    retention = sub.add_parser(
        "retention",
        help="the retention policy recorded in the key store: set-policy, show",
        description="The retention policy recorded in the key store, which enforcement follows "
        "(docs/retention.md, 'Recording the policy'). The vault is configured by CCVAULT_* "
        "variables.",
    )
    policy_sub = retention.add_subparsers(dest="retention_command", metavar="ACTION")
    set_policy = policy_sub.add_parser(
        "set-policy",
        help="record the policy of FILE; print what changes, when, and what it would expire",
        description="Record the retention policy of FILE (TOML, or YAML with the yaml extra) in "
        "the key store — a signed entry of the erasure ledger first when a ledger is "
        "configured — and print, per category, what changes and when: an added category and a "
        "longer keep_for at once; a keep_for that may be shorter, a dropped category and a "
        "category with periods back in the policy only after the policy grace "
        "(CCVAULT_RETENTION_POLICY_GRACE_DAYS, 7 by default), with the periods the first "
        "enforcement after it would expire because of it. Recording the policy already "
        "recorded changes nothing (safe at every deployment). A category whose periods were "
        "made with another granularity or tz is refused. Exit status 0; 1: an error (a policy "
        "file with errors, each key path named; a refused category; no ledger reachable), "
        "nothing recorded.",
    )
    set_policy.add_argument("file", metavar="FILE", help="the policy file (retention.toml)")
    set_policy.add_argument(
        "--by", required=True, help="who records it (1 to 128 printable characters)"
    )
    set_policy.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would change, record nothing (opens the vault read-only)",
    )
    set_policy.add_argument(
        "--format", choices=("json", "text"), default="json", help="output format (json)"
    )
    policy_sub.add_parser(
        "show",
        help="print the recorded policy, what is in force now and the changes waiting (read-only)",
        description="Print, as JSON, the retention policy recorded in the key store (its "
        "categories, digest, who recorded it and when, the ledger seq of its entry), the "
        "categories in force now, the changes still waiting for the policy grace, and whether "
        "this process's policy (CCVAULT_RETENTION_POLICY) is the recorded one. Read-only.",
    )
    move = policy_sub.add_parser(
        "move",
        help="move existing values of retention-bound columns into their periods (resumable)",
        description="Re-encrypt the suite-1 values of the models' retention-bound columns "
        "(written before the column gained retention=) under the period of their row's "
        "retention_from (NULL: now), in batches selected FOR UPDATE SKIP LOCKED on PostgreSQL "
        "and MariaDB (several workers may share a table). Resumable. A value whose period has "
        "already expired is never re-encrypted: counted stale, or set NULL with "
        "--expire-stale. Progress on stderr; prints a JSON report per table. Exit status 0; 1: "
        "an error. The vault is configured by CCVAULT_* variables.",
    )
    purge = policy_sub.add_parser(
        "purge",
        help="delete rows whose encrypted values are all expired, shredded or NULL",
        description="Delete the rows of the models whose encrypted values are each NULL, "
        "EXPIRED or SHREDDED (one at least not NULL), decided from headers and key states "
        "without decrypting, in batches; rows with a live or held value are counted and kept. "
        "Progress on stderr; prints a JSON report per table. Exit status 0; 1: an error.",
    )
    for job in (move, purge):
        _models_option(job)
        job.add_argument(
            "--database-url", required=True, help="SQLAlchemy URL of the application database"
        )
        job.add_argument("--batch", type=int, default=500, help="rows per transaction (500)")
        job.add_argument("--dry-run", action="store_true", help="count, change nothing")
    move.add_argument(
        "--expire-stale",
        action="store_true",
        help="set NULL the values of periods already expired (never re-encrypted)",
    )
    sub.add_parser(
        "doctor",
        help="check this process's configuration against its installation (read-only)",
        description="Check this process's configuration against its installation and print "
        "one line per check (ok, warn or FAIL): the retention policy of CCVAULT_RETENTION_POLICY "
        "against the one recorded in the key store (a difference fails, naming both digests "
        "and the command that records the file), and the erasure ledger's agreement with the "
        "key store. Read-only. Exit status 0; 3: a check failed; 1: the vault could not be "
        "opened. The vault is configured by CCVAULT_* variables.",
    )
    enforce = sub.add_parser(
        "enforce-retention",
        help="destroy the retention period secrets whose time has come, preserving held "
        "customers' keys (cron-safe, idempotent; admin)",
        description="Destroy every retention period secret whose expiry (end of the period + "
        "keep_for of its category in CCVAULT_RETENTION_POLICY) the clock has reached: the "
        "period's values then read as expired, in the database and in its backups, with no "
        "data table read or written. The keys of customers under an active legal hold are "
        "preserved first; the preserved keys of customers no longer held are destroyed. Each "
        "batch of periods is one key-store transaction with a signed retention report appended "
        "to the erasure ledger before it commits (a ledger is needed; the command refuses "
        "while the ledger is unverified). A category absent from the policy is never expired. "
        "Progress on stderr; prints the report as JSON. Exit status 0; 3: period rows were "
        "left alone (named on stderr); 1: an error. --dry-run opens the vault read-only and "
        "prints what would be done. The vault is configured by CCVAULT_* variables.",
    )
    enforce.add_argument(
        "--dry-run", action="store_true", help="print what would be destroyed, change nothing"
    )
    args = parser.parse_args(argv)
    if args.command == "retention":
        from ._retention import run_set_policy, run_show_policy

        if args.retention_command == "set-policy":
            return run_set_policy(args.file, by=args.by, dry_run=args.dry_run, output=args.format)
        if args.retention_command == "show":
            return run_show_policy()
        if args.retention_command in ("move", "purge"):
            from ._housekeeping import run_move, run_purge

            if args.retention_command == "move":
                return run_move(
                    args.models,
                    args.database_url,
                    batch=args.batch,
                    expire_stale=args.expire_stale,
                    dry_run=args.dry_run,
                )
            return run_purge(args.models, args.database_url, batch=args.batch, dry_run=args.dry_run)
        retention.print_help(sys.stderr)
        return 2
    if args.command == "doctor":
        from ._retention import run_doctor

        return run_doctor()
    if args.command == "enforce-retention":
        from ._enforce import run_enforce

        return run_enforce(dry_run=args.dry_run)
    if args.command in ("hold", "release", "holds"):
        from ._holds import run_hold, run_holds, run_release

        if args.command == "hold":
            return run_hold(args.subject, case=args.case, by=args.by, until=args.until)
        if args.command == "release":
            return run_release(args.hold_id, by=args.by)
        return run_holds(args.subject, all_holds=args.all_holds)
    if args.command in ("shred", "shred-many"):
        from ._shred import run_shred, run_shred_many

        if bool(args.models) != bool(args.database_url):
            parser.error(f"{args.command}: --models and --database-url go together")
        if args.by is not None and not args.override_hold:
            parser.error(f"{args.command}: --by goes with --override-hold")
        if args.command == "shred-many":
            return run_shred_many(
                args.path,
                models=args.models,
                database_url=args.database_url,
                override_hold=args.override_hold,
                by=args.by,
            )
        if args.dry_run and args.override_hold:
            parser.error("shred: --dry-run changes nothing, it overrides no hold")
        return run_shred(
            args.subject,
            dry_run=args.dry_run,
            models=args.models,
            database_url=args.database_url,
            override_hold=args.override_hold,
            by=args.by,
        )
    if args.command == "erasure-status":
        from ._complete import run_status

        return run_status(args.receipt_id)
    if args.command == "complete-erasures":
        from ._complete import run_complete

        return run_complete(args.models, args.database_url)
    if args.command == "data-map":
        from ._export import run_data_map

        return run_data_map(args.models, args.format)
    if args.command == "export-subject":
        from ._export import run_export_subject

        return run_export_subject(args.models, args.database_url, args.subject)
    if args.command == "scrub":
        from ._scrub import run_scrub

        if args.batch < 1:
            parser.error("--batch must be at least 1")
        return run_scrub(args.models, args.database_url, args.batch)
    if args.command in admin:
        from ._admin import run_admin

        return run_admin(
            args.command,
            dry_run=getattr(args, "dry_run", False),
            accept_unreadable=getattr(args, "accept_unreadable", False),
            output=getattr(args, "format", "json"),
        )
    if args.command == "demo":
        from ._demo import run_demo

        if args.customers < 2:
            parser.error("--customers must be at least 2")
        return run_demo(customers=args.customers, seed=args.seed, keep=args.keep)
    parser.print_help(sys.stderr)
    return 2


def _models_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--models",
        action="append",
        required=True,
        metavar="MODULE",
        help="module defining the models, e.g. app.models (repeatable)",
    )


def _override_options(command: argparse.ArgumentParser) -> None:
    """--override-hold and --by of the shred commands."""
    command.add_argument(
        "--override-hold",
        action="store_true",
        help="shred customers under an active legal hold all the same (a signed override entry "
        "in the erasure ledger, before the receipt)",
    )
    command.add_argument(
        "--by", help="with --override-hold: who decided the override (recorded in its entry)"
    )


def _sweep_options(command: argparse.ArgumentParser) -> None:
    """--models and --database-url of the shred commands: the tables to sweep, optional."""
    command.add_argument(
        "--models",
        action="append",
        metavar="MODULE",
        help="module defining the models whose tables to sweep, e.g. app.models (repeatable; "
        "with --database-url)",
    )
    command.add_argument("--database-url", help="SQLAlchemy URL of the application database")
