"""The ``Encrypted`` and ``BlindIndex`` column types."""

from __future__ import annotations

import copy
import operator
import weakref
from collections.abc import Callable
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import Mapper, column_property
from sqlalchemy.sql.elements import ColumnClause, Null
from sqlalchemy.sql.operators import OperatorType
from sqlalchemy.types import TypeDecorator

from .._repr import safe_repr
from .._sentinels import (
    SHREDDED,
    Sentinel,
    Shredded,
    refusal,
)  # SHREDDED, Shredded: kept importable here
from ..crypto._blind import normalizer as _normalizer
from ..crypto._format import OVERHEAD, SUITE_AES256GCM, SUITE_AES256GCM_PERIOD
from ..errors import CcvaultError, ConfigurationError
from ..retention._policy import is_zone_name
from ._codec import Codec, codec_for
from ._limits import Limits, limits_for

__all__ = [
    "ATTACHED",
    "ON_ERROR",
    "SHREDDED",
    "VAULT",
    "BlindIndex",
    "Encrypted",
    "IndexValue",
    "OnError",
    "Prepared",
    "Sealed",
    "Sentinel",
    "Shredded",
    "base_column",
]

ATTACHED = "_ccvault_attached"  # set on an engine's dialect by attach()
VAULT = "_ccvault_vault"  # the attached vault, on the dialect

OnNullSubject = Literal["error", "vaultwide"]
OnError = Literal["raise", "sentinel"]
ON_ERROR: tuple[OnError, ...] = ("raise", "sentinel")


class BindRefused(CcvaultError, TypeError):
    """A value the bind step of an encrypted or blind-index column refuses (a TypeError)."""


@sa.event.listens_for(Engine, "handle_error")
def _raise_as_is(context: Any) -> BaseException | None:
    """ccvault's own errors from a bind step reach the caller as themselves, never wrapped in
    a StatementError whose message lists the statement's parameters (plaintext) in clear."""
    error = context.original_exception
    if isinstance(error, CcvaultError) and context.sqlalchemy_exception is not None:
        return copy.copy(error)  # raised "from" the original, which names no parameter
    return None


class Sealed(bytes):
    """A ciphertext produced by ccvault's statement hook: the only thing the bind step accepts."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<ciphertext {len(self)} bytes>"


class Prepared(TypeDecorator[bytes]):
    """The bind type the write hook gives an encrypted or blind-index column in an INSERT whose
    every row it prepared itself (``_write._prepared``): the rows hold the driver's own bytes
    of ciphertexts and indexes, or None, so there is nothing left to check or convert per value.
    Never a column's type, and never in a statement the hook did not rewrite."""

    impl = sa.LargeBinary
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if getattr(dialect, ATTACHED, False):
            # The hook runs on this engine: it refuses a prepared statement run again (a copy
            # reached through a result's context), attached or detached (_write.refuse_prepared)
            return None

        def refuse(value: Any) -> Any:
            if value is None:
                return None
            raise ConfigurationError(
                "a statement ccvault prepared for one execution ran on an engine without the "
                "vault: execute your own statement, not the one a result or event handed you"
            )

        return refuse


# Drivers whose parameters go to the sqlite3 module: it adapts every parameter that is not an
# exact int, float, str or bytearray (a registry look-up and a failed attribute look-up on its
# protocol type: about 3,000 instructions a value, as much as the bind step and the copy
# together); a bytearray is bound as the same BLOB without any of it.
_SQLITE3_DRIVERS = frozenset({"pysqlite", "aiosqlite"})


# value[:] of a bytes subclass is a copy of exact type bytes (only exact bytes slice to
# themselves): bytes(value) without the type call and the buffer protocol, half the cost
_EXACT_BYTES: Callable[[bytes], bytes] = operator.itemgetter(slice(None))


def driver_type(dialect: Dialect) -> type[bytes] | type[bytearray]:
    """The exact type the driver binds as binary fastest: ``bytearray`` for the sqlite3 module
    (bound without adaptation), else ``bytes``."""
    if dialect.name == "sqlite" and dialect.driver in _SQLITE3_DRIVERS:
        return bytearray
    return bytes


def driver_bytes(dialect: Dialect) -> Callable[[bytes], bytes | bytearray]:
    """The bind step's copy of a ciphertext or blind index, of the driver's exact type
    (:func:`driver_type`). Never the ``Sealed`` or ``IndexValue`` itself: drivers look encoders
    up by exact type, and a subclass could reach one that is not binary's."""
    return bytearray if driver_type(dialect) is bytearray else _EXACT_BYTES


_ALLOWED_OPS = frozenset({"is_", "is_not", "isnot"})


class Encrypted(TypeDecorator[Any]):
    """An SQLAlchemy column type whose values are encrypted per data subject.

    ``Encrypted(String(32), subject="customer_id")`` stores AES-256-GCM ciphertexts (bytes) under
    the key of the row's subject, read from the column ``subject`` of the same row at write time.
    The context label defaults to ``"table.column"``; pin it with ``context=`` when renaming.
    ``on_null_subject="vaultwide"`` encrypts rows whose subject is NULL under the label's
    vault-wide key instead of raising. ``strict=True`` raises SubjectShreddedError on reads of
    shredded values instead of returning :data:`SHREDDED`. ``on_error="sentinel"`` reads a value
    that fails to decrypt as :data:`UNREADABLE` (and logs where it is) instead of raising
    DecryptionError; ``"raise"`` raises; unset, the column follows ``vault.attach(on_error=)``.

    ``legacy_plaintext=True`` is the migration flag for a column whose existing rows still hold
    plaintext (docs/sqlalchemy.md, "Encrypting an existing column"): reads return a stored value
    that is not a ccvault ciphertext as it is, instead of raising DecryptionError. Writes always
    encrypt. Turn it off once every row is rewritten: while it is on, anyone who can write to
    the table can plant unauthenticated values in it.

    ``retention="transcripts"`` (a category of the vault's retention policy) seals each value
    under its period key (suite 2): it reads as :data:`EXPIRED` once the period's secret is
    destroyed by ``enforce_retention()``. ``retention_from="started_at"`` names the column of
    the same table (a ``DateTime`` the application sets) whose value is the event time that
    picks the period; NULL or no ``retention_from``: the write time. A ``DateTime()`` without
    a time zone needs ``retention_tz="UTC"`` (or another IANA zone) to read its naive values
    in (docs/retention.md, "Values and columns"). Not with ``searchable=`` (a blind index
    would outlive the value's expiry) nor ``on_null_subject="vaultwide"``.
    """

    impl = sa.LargeBinary
    cache_ok = True

    def __init__(
        self,
        type_: sa.types.TypeEngine[Any] | type[sa.types.TypeEngine[Any]],
        *,
        subject: str,
        context: str | None = None,
        on_null_subject: OnNullSubject = "error",
        strict: bool = False,
        searchable: str | None = None,
        index_bytes: int = 8,
        legacy_plaintext: bool = False,
        on_error: OnError | None = None,
        retention: str | None = None,
        retention_from: str | None = None,
        retention_tz: str | None = None,
    ) -> None:
        wrapped = type_() if isinstance(type_, type) else type_
        if isinstance(wrapped, Encrypted):
            raise ConfigurationError("Encrypted cannot wrap Encrypted")
        if not isinstance(subject, str) or not subject:
            raise ConfigurationError("subject= names the column holding the row's data subject")
        if on_null_subject not in ("error", "vaultwide"):
            raise ConfigurationError('on_null_subject is "error" or "vaultwide"')
        if on_error is not None and on_error not in ON_ERROR:
            raise ConfigurationError('on_error is "raise" or "sentinel"')
        if context is not None and (not isinstance(context, str) or not context):
            raise ConfigurationError("context= must be a non-empty string")
        self.wrapped = wrapped
        self.codec: Codec = codec_for(wrapped)
        self.limits: Limits = limits_for(wrapped, self.codec)
        if searchable is not None:
            if self.codec.name != "str":
                raise ConfigurationError("searchable= needs a String or Text column")
            try:
                _normalizer(searchable)
            except ValueError as exc:
                raise ConfigurationError(str(exc)) from None
            if not 4 <= index_bytes <= 32:
                raise ConfigurationError("index_bytes is between 4 and 32")
        _check_retention(retention, retention_from, retention_tz, searchable, on_null_subject)
        self.retention = retention
        self.retention_from = retention_from
        self.retention_tz = retention_tz
        self.searchable = searchable
        self.index_bytes = index_bytes
        self.subject = subject
        self.context = context
        self.on_null_subject = on_null_subject
        self.strict = strict
        self.legacy_plaintext = bool(legacy_plaintext)
        self.on_error: OnError | None = on_error
        super().__init__()

    # -- identity, caching, migrations -----------------------------------------------------------

    @property
    def _static_cache_key(self) -> Any:
        # SQLAlchemy asks for it each time it builds a Core statement's cache key (each
        # execution): made once, as SQLAlchemy memoises its own types' (the wrapped type's repr
        # alone costs microseconds). The type is not changed after it is made.
        key = self.__dict__.get("_ccvault_cache_key")
        if key is None:
            key = self.__dict__["_ccvault_cache_key"] = self._cache_key_of()
        return key

    def _cache_key_of(self) -> tuple[Any, ...]:
        return (
            type(self),
            repr(self.wrapped),
            self.subject,
            self.context,
            self.on_null_subject,
            self.strict,
            self.searchable,
            self.index_bytes,
            self.legacy_plaintext,
            self.on_error,
            self.retention,
            self.retention_from,
            self.retention_tz,
        )

    @safe_repr
    def __repr__(self) -> str:
        # legacy_plaintext is left out: a read-time migration aid, not part of the schema, and
        # not to be frozen into migration files
        args = [repr(self.wrapped), f"subject={self.subject!r}"]
        if self.context is not None:
            args.append(f"context={self.context!r}")
        if self.on_null_subject != "error":
            args.append(f"on_null_subject={self.on_null_subject!r}")
        if self.strict:
            args.append("strict=True")
        if self.searchable is not None:
            args.append(f"searchable={self.searchable!r}")
            if self.index_bytes != 8:
                args.append(f"index_bytes={self.index_bytes}")
        if self.on_error is not None:
            args.append(f"on_error={self.on_error!r}")
        if self.retention is not None:
            args.append(f"retention={self.retention!r}")
        if self.retention_from is not None:
            args.append(f"retention_from={self.retention_from!r}")
        if self.retention_tz is not None:
            args.append(f"retention_tz={self.retention_tz!r}")
        return f"Encrypted({', '.join(args)})"

    @property
    def python_type(self) -> type[Any]:
        return self.wrapped.python_type

    def copy(self, **kw: Any) -> Encrypted:
        return Encrypted(
            self.wrapped,
            subject=self.subject,
            context=self.context,
            on_null_subject=self.on_null_subject,
            strict=self.strict,
            searchable=self.searchable,
            index_bytes=self.index_bytes,
            legacy_plaintext=self.legacy_plaintext,
            on_error=self.on_error,
            retention=self.retention,
            retention_from=self.retention_from,
            retention_tz=self.retention_tz,
        )

    # -- storage ---------------------------------------------------------------------------------

    def storage_length(self) -> int | None:
        """Bytes a stored value can take, or None when unbounded (Text, JSON, LargeBinary).

        Every value the write hook accepts fits: the codec tag, the format's overhead and the
        most bytes the declared type's limits let through (4 UTF-8 bytes a character). A
        ``retention=`` column's values are suite 2, 16 bytes longer (their period id).
        """
        payload = self.limits.max_payload
        suite = SUITE_AES256GCM if self.retention is None else SUITE_AES256GCM_PERIOD
        return None if payload is None else 1 + OVERHEAD[suite] + payload

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            n = self.storage_length()
            if n is None or n > 65_000:
                return dialect.type_descriptor(mysql.LONGBLOB())
            return dialect.type_descriptor(mysql.VARBINARY(n))
        return dialect.type_descriptor(sa.LargeBinary())

    # -- values ----------------------------------------------------------------------------------

    def bind_processor(self, dialect: Dialect) -> Any:
        to_driver = driver_bytes(dialect)

        def process(value: Any) -> Any:
            if type(value) is Sealed:  # first: every value written
                return to_driver(value)
            if value is None:
                return None
            if isinstance(value, Sentinel):
                raise BindRefused(refusal(value))
            raise ConfigurationError(
                "a value for an Encrypted column reached the database without being encrypted: "
                "attach the vault to this engine (vault.attach(engine)), and write encrypted "
                "columns through INSERT/UPDATE statements, not comparisons"
            )

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        # Values are decrypted by the attached engine's result hook (ccvault.sqlalchemy._read),
        # which sees whole batches of rows and the row's subject; nothing is left to do here.
        if getattr(dialect, ATTACHED, False):
            return None

        def refuse(value: Any) -> Any:
            if value is None or getattr(dialect, ATTACHED, False):
                return value  # attached after this processor was cached
            raise ConfigurationError(
                "an Encrypted column was read on an engine without the vault: "
                "call vault.attach(engine)"
            )

        return refuse

    # -- comparisons -----------------------------------------------------------------------------

    class comparator_factory(TypeDecorator.Comparator[Any]):
        # The blind-index column this comparator's column searches through, found at the first
        # search (SQLAlchemy keeps one comparator per column, ORM attribute and alias).
        _index: Any = None

        def _search_index(self) -> Any:
            """The blind-index column of a searchable column (None for another column)."""
            index = self._index
            if index is None and getattr(self.type, "searchable", None) is not None:
                index = self._index = _companion(self.expr)
            return index

        def operate(self, op: OperatorType, *other: Any, **kwargs: Any) -> Any:
            if op is operator.eq and type(other[0]) is str:  # a lookup by value: first
                index = self._search_index()
                if index is not None:
                    return index.comparator.operate(op, other[0])
            name = getattr(op, "__name__", "")
            if name in ("eq", "ne"):
                o = other[0]
                if o is None or isinstance(o, Null):
                    # == None / != None: IS NULL / IS NOT NULL on the value column, as
                    # everywhere in SQLAlchemy, searchable or not. Never on the blind index: a
                    # shred sets it to NULL while the (unreadable) value stays.
                    return super().operate(op, *other, **kwargs)
                if isinstance(o, ColumnClause) or (
                    isinstance(o, sa.ColumnElement) and _same_column(self.expr, o)
                ):
                    # SQLAlchemy itself compares columns with columns, and a column with its own
                    # copies: a Core statement run again from the compiled cache merges its
                    # columns into the cached result map, a dict, whose key lookup calls ``==``;
                    # an INSERT's compiler tests whether a column is in its RETURNING list. The
                    # truth value of such an expression compares identities. In a statement, a
                    # comparison that reaches an encrypted column is refused before it runs
                    # (``_inspect``), naming the column.
                    return super().operate(op, *other, **kwargs)
            etype = self.type
            if name in ("eq", "in_op") and (index := self._search_index()) is not None:
                if name == "eq":
                    return index == other[0]
                return index.in_(other[0])
            if name not in _ALLOWED_OPS:
                hint = " (declare searchable= for == and in_)" if name in ("eq", "in_op") else ""
                works = "== None / != None (IS NULL / IS NOT NULL)"
                if getattr(etype, "searchable", None) is not None:
                    works = f"== and in_() with values (its blind index) and {works}"
                shown = name.removesuffix("_op") or op
                raise TypeError(
                    f"cannot use {shown} on the encrypted column {column_name(self.expr)}: the "
                    f"database holds only ciphertext{hint}; only {works} work"
                )
            return super().operate(op, *other, **kwargs)

        def reverse_operate(self, op: OperatorType, other: Any, **kwargs: Any) -> Any:
            raise TypeError("cannot compare an encrypted column")


SEARCHABLE_RETENTION = (
    "searchable= cannot be combined with retention=: a blind index is a keyed hash of the value "
    "under a key of the column, not of the period, so it would outlive the value's expiry and "
    "still tell which rows held a given phone number or e-mail "
    "(docs/retention.md, 'Values and columns')"
)


def _check_retention(
    retention: object,
    retention_from: object,
    retention_tz: object,
    searchable: object,
    on_null_subject: object,
) -> None:
    """ConfigurationError for retention arguments no table could use (declaration time)."""
    if retention is None:
        if retention_from is not None or retention_tz is not None:
            raise ConfigurationError(
                "retention_from= and retention_tz= need retention= (a retention category)"
            )
        return
    if not isinstance(retention, str) or not retention:
        raise ConfigurationError("retention= names a category of the vault's retention policy")
    if searchable is not None:
        raise ConfigurationError(SEARCHABLE_RETENTION)
    if on_null_subject != "error":
        raise ConfigurationError(
            "retention= cannot be combined with on_null_subject='vaultwide': vault-wide values "
            "take no retention (their key is the vault's, not a subject's)"
        )
    if retention_from is not None and (not isinstance(retention_from, str) or not retention_from):
        raise ConfigurationError("retention_from= names a DateTime column of the same table")
    if retention_tz is not None:
        if retention_from is None:
            raise ConfigurationError(
                "retention_tz= is the zone of a naive retention_from column: give retention_from="
            )
        if not is_zone_name(retention_tz):
            raise ConfigurationError(
                "retention_tz= must be an IANA time zone name spelt as the tz database does, "
                "e.g. 'UTC' or 'Europe/Paris'"
            )


def column_name(col: Any) -> str:
    """``table.column`` of the table column behind ``col`` (through labels, aliases and
    subqueries), for error messages."""
    base = base_column(col)
    if base is not None:
        return f"{base.table.name}.{base.name}"
    table = getattr(col, "table", None)
    return f"{getattr(table, 'name', '?')}.{getattr(col, 'name', '?')}"


def base_column(col: Any) -> sa.Column[Any] | None:
    """The table column behind a column element (through labels, aliases, ORM annotations)."""
    for candidate in getattr(col, "proxy_set", ()):
        if isinstance(candidate, sa.Column) and isinstance(candidate.table, sa.Table):
            return candidate
    return None


def _same_column(expr: Any, other: sa.ColumnElement[Any]) -> bool:
    """``other`` is ``expr`` itself or an (annotated) copy of the same table column."""
    mine = base_column(expr)
    return mine is not None and base_column(other) is mine


def _companion(expr: Any) -> Any:
    """The blind-index column beside an encrypted column, from the same table or alias."""
    table = getattr(expr, "table", None)
    key = f"{expr.key}_bidx"
    companion = table.c.get(key) if table is not None else None
    if companion is None:
        raise ConfigurationError(f"no blind-index column {key!r} beside {expr.key!r}")
    return companion


class IndexValue(bytes):
    """A blind-index value computed by the statement hook (passes the bind step as is)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<blind index {len(self)} bytes>"


class BlindIndex(TypeDecorator[bytes]):
    """The companion column of a ``searchable=`` encrypted column: a keyed, truncated HMAC.

    Bound plain strings (``Customer.phone == "+44 20 7946 0018"``, or through ``bindparam``) are
    normalised and hashed at bind time with the vault attached to the engine.
    """

    impl = sa.LargeBinary
    cache_ok = True

    def __init__(self, normalizer: str, *, context: str, length: int = 8) -> None:
        self.normalizer = normalizer
        self.context = context
        self.length = length
        self.norm = _normalizer(normalizer)
        super().__init__()

    @safe_repr
    def __repr__(self) -> str:
        return f"BlindIndex({self.normalizer!r}, context={self.context!r}, length={self.length})"

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.VARBINARY(self.length))
        return dialect.type_descriptor(sa.LargeBinary())

    def bind_processor(self, dialect: Dialect) -> Any:
        norm, label, length = self.norm, self.context, self.length
        to_driver = driver_bytes(dialect)
        # (vault, its blind index of this column as a function of a str), replaced as one
        # tuple: thread-safe
        resolved: list[tuple[Any, Callable[[str], bytes]] | None] = [None]

        def process(value: Any) -> Any:
            if type(value) is IndexValue:  # first: every value written
                return to_driver(value)
            if value is None:
                return None
            if not isinstance(value, str):
                raise BindRefused(f"{label}: search values are str")
            if isinstance(value, Sentinel):  # a str, but no data: never hashed, never found
                raise BindRefused(f"{label}: {value!r} is no search value")
            vault = getattr(dialect, VAULT, None)
            if vault is None:
                raise ConfigurationError("blind-index search needs vault.attach(engine)")
            pair = resolved[0]
            if pair is None or pair[0] is not vault:
                pair = resolved[0] = (vault, vault.blind_indexer(label, norm, length).index)
            return to_driver(pair[1](value))  # .index: the str check is above

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        return None


# -- the companion column ------------------------------------------------------------------------

searchable_tables: weakref.WeakSet[sa.Table] = weakref.WeakSet()
_AUTO = "ccvault.companion"


# Every table with an encrypted column (attach() checks them all: labels, subject column).
encrypted_tables: weakref.WeakSet[sa.Table] = weakref.WeakSet()


@sa.event.listens_for(sa.Column, "after_parent_attach")
def _add_companion(column: sa.Column[Any], table: Any) -> None:
    etype = column.type
    if not isinstance(etype, Encrypted) or not isinstance(table, sa.Table):
        return
    encrypted_tables.add(table)
    if etype.searchable is None:
        return
    name = f"{column.name}_bidx"
    if name not in table.c:
        label = etype.context or f"{table.name}.{column.name}"
        table.append_column(
            sa.Column(
                name,
                BlindIndex(etype.searchable, context=label, length=etype.index_bytes),
                key=f"{column.key}_bidx",
                nullable=True,
                index=True,
                info={_AUTO: True},
            )
        )
    searchable_tables.add(table)


@sa.event.listens_for(sa.Column, "before_parent_attach")
def _explicit_companion_wins(column: sa.Column[Any], table: Any) -> None:
    """A companion column given explicitly (an Alembic migration renders one) replaces the one
    added automatically when its encrypted column arrived first."""
    if not isinstance(table, sa.Table) or not isinstance(column.type, BlindIndex):
        return
    existing = table.c.get(column.key)
    if existing is None or existing is column or not existing.info.get(_AUTO):
        return
    for index in [ix for ix in table.indexes if existing in ix.columns.values()]:
        table.indexes.discard(index)
    table._columns.remove(existing)


@sa.event.listens_for(Mapper, "instrument_class")
def _defer_companions(mapper: Mapper[Any], _class: type[Any]) -> None:
    """A companion column added automatically is mapped deferred: an entity select does not
    load it (nothing reads it: a search compares it in SQL, the post-filter compares the
    decrypted value), and accessing the attribute loads it. A companion the model maps itself
    is left as the model maps it.

    Runs as the mapper is constructed, before it maps the table's columns: the deferred
    property is one of the properties it is given (``Mapper._init_properties``), the way
    ``__mapper_args__ = {"properties": ...}`` gives it, so nothing is remapped."""
    table = mapper.local_table
    properties = getattr(mapper, "_init_properties", None)
    if table not in searchable_tables or not isinstance(properties, dict):
        return
    for column in table.columns:
        if column.info.get(_AUTO) and column.key not in properties:
            properties[column.key] = column_property(column, deferred=True)
