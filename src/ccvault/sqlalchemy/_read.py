"""The read side: decrypt whole batches of rows before SQLAlchemy builds rows or instances.

An engine-level ``after_cursor_execute`` hook gives every SELECT (and RETURNING) that returns an
encrypted column a fetch strategy that wraps the DBAPI cursor. Each batch the cursor yields —
``fetchall`` for ordinary results, each ``yield_per`` partition, or a read-ahead of 100 rows for
row-by-row iteration — is decrypted in one pass: the cold keys of the batch are loaded with one
key-store query per 500, and where the row also holds the value's subject column (every ORM
entity load does), the value's key must belong to that subject.

The row loop has no per-value error handling: when one value of a batch fails, the batch is
read again value by value (``Reader._retry``), which knows each value's table, column and
primary key, and gives the located error (raised by ``Reader.process`` from a frame that holds
no decrypted value, with no ``__context__``: error trackers send frame locals), or puts
``UNREADABLE`` in the value's place where the column or attachment says ``on_error="sentinel"``.
Whatever else leaves the loop or the retry, they clear what they decrypted first.

SQLAlchemy logs result rows at DEBUG after the fetch strategy decrypted them; while an engine
logs, the same hook has the rows of a statement that returns encrypted columns logged with those
values shown as ``<encrypted>`` (``_log_rows``).
"""

from __future__ import annotations

import collections
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import cursor as _cursor
from sqlalchemy.engine.interfaces import ExecuteStyle
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnElement,
)

from .._repr import safe_repr
from .._sentinels import UNREADABLE, Sentinel
from ..crypto import _format as fmt
from ..crypto._blind import Normalizer
from ..errors import DecryptionError, RetentionExpiredError, SubjectShreddedError
from ._codec import STR, CodecError
from ._loop import UUID_HEX, Column, Group, compile_loop
from ._plan import ColumnPlan, plan_for
from ._types import BlindIndex, Encrypted, OnError, base_column

if TYPE_CHECKING:
    from ..keyring import KeyRing

__all__ = ["after_cursor_execute"]

log = logging.getLogger("ccvault")

_READ_AHEAD = 100
_HEADER = fmt.SUITE1_HEADER_BYTES  # version, suite, key id, key version
_HEADER2 = fmt.SUITE2_HEADER_BYTES  # ... and a retention period id (suite 2)
_SUITE2 = bytes((fmt.SUITE_AES256GCM_PERIOD,))  # a value's second byte, sliced
_STR_TAG = STR.tag
# What a failed value raises inside the row loop (a wrong subject and an unknown key raise
# DecryptionError; a shredded or expired value in strict mode SubjectShreddedError or
# RetentionExpiredError).
_FAILURES = (
    fmt.InvalidTag,
    CodecError,
    UnicodeDecodeError,
    ValueError,
    DecryptionError,
    SubjectShreddedError,
    RetentionExpiredError,
    RecursionError,  # JSON nested deeper than the parser goes (a sealed or a legacy value)
)

# The primary key of a row: (row index, the column type's result processor) per key column.
_PrimaryKey = tuple[tuple[int, Callable[[Any], Any] | None], ...]


class Slot:
    __slots__ = ("col", "index", "on_error", "primary_key", "strict", "subject_index")

    def __init__(
        self,
        index: int,
        col: ColumnPlan,
        subject_index: int | None,
        strict: bool,
        on_error: OnError = "raise",
        primary_key: _PrimaryKey | None = None,
    ):
        self.index = index
        self.col = col
        self.subject_index = subject_index
        self.strict = strict
        self.on_error = on_error
        self.primary_key = primary_key  # None: the statement does not select all of it

    def where(self, row: Sequence[Any]) -> dict[str, Any]:
        """The location of this column's value in a raw row: table, column, primary key."""
        pk = None
        if self.primary_key is not None:
            pk = tuple(_processed(row[i], process) for i, process in self.primary_key)
        column = self.col.column
        return {"table": column.table.fullname, "column": column.name, "primary_key": pk}


def _processed(value: Any, process: Callable[[Any], Any] | None) -> Any:
    """A raw primary key value as SQLAlchemy returns it (a UUID from SQLite's hex text); a value
    the dialect's processor cannot take (a driver's value of another type) as it is: the error
    it locates is raised, not the processor's."""
    if process is None or value is None:
        return value
    try:
        return process(value)
    except (TypeError, ValueError, AttributeError):
        return value


class _IndexTerm:
    """``companion == :x`` / ``companion IN (...)`` in the WHERE clause of an entity select."""

    __slots__ = ("bind_name", "index", "norm")

    def __init__(self, index: int, normalizer: Normalizer, bind_name: str) -> None:
        self.index = index
        self.norm = normalizer.utf8()  # what the blind index hashes, in UTF-8
        self.bind_name = bind_name


class Search:
    """The arguments of one blind-index term of an execution, for the post-filter: a decrypted
    value matches when it is one of the arguments as given (an exact ``str``), or else when its
    normalisation is one of theirs. The arguments are normalised at the first value that is
    not one of them (a truncated-index collision, or another spelling of the same number):
    a lookup whose row holds the value searched for normalises nothing."""

    __slots__ = ("_allowed", "given", "index", "norm", "values")

    def __init__(
        self, index: int, norm: Callable[[str], bytes], values: list[str], given: set[str]
    ) -> None:
        self.index = index  # the encrypted column's index in the row
        self.norm = norm  # what the blind index hashes, in UTF-8 (its own fast normaliser)
        self.values = values  # the arguments that are data (str, no sentinel)
        self.given = given  # those of exactly type str (a subclass's __eq__ decides nothing)
        self._allowed: set[bytes] | None = None

    def admits(self, value: str) -> bool:
        """``value`` (an exact str) normalises as one of the arguments."""
        allowed = self._allowed
        if allowed is None:
            allowed = self._allowed = {self.norm(v) for v in self.values}
        return self.norm(value) in allowed


Filters = list[Search]
_SEQUENCES = (list, tuple)  # a list of search arguments bound as one parameter
_NO_FILTERS: Filters = []  # never mutated


class Known(dict[bytes, Any]):
    """The keys a batch of rows has met, by value header. ``loaded``: the keys of every value
    of the batch were resolved together (the key store asked once for the cold ones)."""

    loaded = False


class Reader:
    """Decrypts the encrypted columns of raw DBAPI rows of one compiled statement: each batch
    through the loop generated for its columns (``_loop``), rows it does not handle and the
    batches of other widths through the generic loop (``_run``)."""

    __slots__ = ("by_index", "groups", "loop", "positions", "ring", "slots", "terms", "width")

    def __init__(
        self, ring: KeyRing, slots: list[Slot], terms: list[_IndexTerm], width: int
    ) -> None:
        self.ring = ring
        self.width = width
        self.slots = slots
        self.terms = terms
        self.positions = tuple(slot.index for slot in slots)
        self.by_index = {slot.index: slot for slot in slots}
        by_subject: dict[int | None, list[Column]] = {}
        for slot in slots:
            col = slot.col
            loads = None if col.is_str else col.codec.loads
            unsealed = _legacy_reader(col) if col.etype.legacy_plaintext else _refuse
            by_subject.setdefault(slot.subject_index, []).append(
                (slot.index, col.ctx_lp, loads, slot.strict, unsealed, col.retention is not None)
            )
        self.groups: tuple[Group, ...] = tuple((k, tuple(v)) for k, v in by_subject.items())
        self.loop = compile_loop(self.groups, width, _matches if terms else None)

    def filters(self, context: Any) -> Filters:
        """The search arguments of this execution, for the post-filter."""
        if not self.terms:
            return _NO_FILTERS
        compiled_parameters = context.compiled_parameters
        params = compiled_parameters[0] if compiled_parameters else {}
        expanded = getattr(context, "_expanded_parameters", None)
        out: Filters = []
        for term in self.terms:
            names = expanded.get(term.bind_name) if expanded else None
            if names is None:  # one bound value (``==``), or a list for a non-expanded IN
                value = params.get(term.bind_name)
                if type(value) is str:  # ``==`` a str: the lookup
                    out.append(Search(term.index, term.norm, [value], {value}))
                    continue
                values = value if isinstance(value, _SEQUENCES) else (value,)
            else:  # an expanding IN: one bound parameter per value
                values = []
                for name in names:
                    v = params.get(name)
                    values.extend(v if isinstance(v, _SEQUENCES) else (v,))
            data: list[str] = []
            given: set[str] = set()
            for v in values:
                if type(v) is str:
                    data.append(v)
                    given.add(v)
                elif isinstance(v, str) and not isinstance(v, Sentinel):
                    data.append(v)  # a str subclass: matched by its normalisation only
            out.append(Search(term.index, term.norm, data, given))
        return out

    def _headers(self, rows: Sequence[Any]) -> set[bytes]:
        """The value headers of a batch of rows (the keys its values name)."""
        positions = self.positions
        headers: set[bytes] = set()
        add = headers.add
        for row in rows:
            for i in positions:
                v = row[i]
                if type(v) is not bytes:
                    if not isinstance(v, bytearray | memoryview):
                        continue
                    v = bytes(v)
                add(fmt.value_header(v))
        return headers

    def process(self, rows: Any, filters: Filters | None = None) -> list[Any]:
        if not rows:
            return []
        known = Known()
        try:
            try:
                if len(rows[0]) != self.width:  # a driver's row of another shape: generic
                    return self._run(rows, filters, self.groups, known, rows)
                return self.loop(rows, filters, known, self.ring.lookup(), self)
            except _FAILURES:
                pass  # dropped: the slow path finds the value (its traceback holds the loop)
            out = self._retry(rows, filters, known)
        except BaseException:
            filters = None  # the search's arguments stay out of the traceback's frames too
            raise
        if isinstance(out, list):
            return out
        # A value that must raise. Raised here, outside any handler (no __context__ leads back
        # to the failures met on the way), from a frame that holds no decrypted value: a
        # traceback keeps the locals of every frame it passes, and error trackers send them.
        filters = None
        raise out

    # What the generated loop calls on its rare paths (a cold key, a row it leaves to the
    # generic loop, a key that does not remember the row's subject): methods of the reader,
    # bound once, so that a batch of one row (a lookup) makes no closure for them.

    def load(self, rows: Sequence[Any], known: Known) -> bool:
        """Resolve every key of the batch ``rows`` into ``known`` together (one key-store
        query per 500 cold ones, not one per key), at the first cold key met; True when this
        call loaded them, False when an earlier one did."""
        if known.loaded:
            return False
        known.loaded = True
        known.update(self.ring.keys(self._headers(rows) - known.keys()))
        return True

    def slow(
        self,
        row: Sequence[Any],
        rows: Sequence[Any],
        filters: Filters | None,
        known: Known,
        cached: Callable[[bytes], Any],
    ) -> list[Any]:
        """The generic loop of one ``row`` of the batch ``rows`` (``cached``: the batch's
        lookup of warm keys): a list of zero or one row."""
        return self._run((row,), filters, self.groups, known, rows, cached)

    def check(self, key: Any, subject: Any) -> None:
        """The subject check of the row loops: raises DecryptionError unless ``key`` belongs to
        ``subject``, a row's subject value as the driver returns it (None: only a vault-wide
        key, which has no subject); a key found to belong to it remembers it (``key.checked``:
        equality instead of a ref lookup next time). Rows whose keys remember their subjects
        (steady state, a lookup by one customer) never call it."""
        if subject is None:
            if key.ref:
                raise DecryptionError
            return
        try:
            ref = self.ring.subject_ref(subject)
        except TypeError:
            # A subject the installation's type refuses ('' for str): no key was made for it.
            raise DecryptionError from None
        if ref != key.ref:
            raise DecryptionError  # another customer's value
        key.checked = subject

    def _run(
        self,
        rows: Sequence[Any],
        filters: Filters | None,
        groups: tuple[Group, ...],
        known: Known,
        batch: Sequence[Any],
        cached: Callable[[bytes], Any] | None = None,
    ) -> list[Any]:
        """The generic row loop: decrypt ``groups`` of ``rows`` (of the batch ``batch``).
        Raises one of ``_FAILURES`` at the first value that cannot be read, with no location
        (``_retry`` finds it). Whatever it raises, its frame is left holding nothing it
        decrypted. The keys of the whole batch are resolved at the first cold key."""
        if cached is None:
            cached = self.ring.lookup()  # warm keys by header
        check, load = self.check, self.load
        known_get = known.get
        out: list[tuple[Any, ...]] = []
        append = out.append
        try:
            for row in rows:
                new = list(row)
                for subject_index, columns in groups:
                    subject: Any = None if subject_index is None else row[subject_index]
                    verified = None  # the last key found to belong to this row's subject
                    for index, ctx_lp, loads, strict, unsealed, by_period in columns:
                        blob = row[index]
                        if blob is None:
                            continue
                        if type(blob) is not bytes:
                            if not isinstance(blob, bytearray | memoryview):
                                new[index] = unsealed(blob)  # text, a number: no ciphertext
                                continue
                            blob = bytes(blob)
                        if by_period:
                            # a retention-bound column: its values are mostly suite 2, looked
                            # up by their 38-byte header (rule 7) at once
                            header = blob[:_HEADER2] if blob[1:2] == _SUITE2 else blob[:_HEADER]
                            key: Any = known_get(header)
                        else:
                            header = blob[:_HEADER]
                            key = known_get(header)
                            if key is None and blob[1:2] == _SUITE2:
                                # a retention period's value (the column lost retention=)
                                header = blob[:_HEADER2]
                                key = known_get(header)
                        if key is None:
                            key = cached(header)
                            if key is None and load(batch, known):  # cold: the whole batch's
                                key = known_get(header)
                            if key is None:  # an unknown key, version or suite
                                new[index] = unsealed(blob)
                                continue
                            known[header] = key
                        if key is not verified and subject_index is not None:
                            # Each value must belong to the row's subject (checked before the
                            # shred state: a moved value is no erasure); a key remembers the
                            # subject it was found to belong to (equal and of the same type:
                            # 1 == 1.0 == True in Python, and one of them is the subject; or the
                            # text of a remembered UUID, UUID_HEX), as in the generated loop.
                            checked = key.checked
                            if checked is not subject:
                                kind = type(subject)
                                if type(checked) is not kind:
                                    if (
                                        kind is str
                                        and type(checked) is uuid.UUID
                                        and (
                                            subject == (digits := UUID_HEX % checked.int)
                                            or (
                                                len(subject) == 36
                                                and subject.replace("-", "") == digits
                                            )
                                        )
                                    ):
                                        key.checked = subject
                                    else:
                                        check(key, subject)
                                elif kind is uuid.UUID:
                                    if checked.int != subject.int:
                                        check(key, subject)
                                elif checked != subject:
                                    check(key, subject)
                            elif checked is None:
                                check(key, subject)
                            verified = key
                        if key.aead is None:  # a shredded or expired tombstone
                            if strict:
                                raise key.error
                            new[index] = key.sentinel
                            continue
                        # (a value too short for its nonce and tag fails here too: ValueError
                        # for the nonce, InvalidTag for the tag)
                        plaintext = key.decrypt(
                            blob[key.nonce_at],
                            blob[key.body_at],
                            key.ads.get(ctx_lp) or key.associated_data(ctx_lp),
                        )
                        if loads is not None:
                            new[index] = loads(plaintext)
                        elif plaintext and plaintext[0] == _STR_TAG:  # the str codec, inline
                            new[index] = plaintext.decode()[1:]
                        else:
                            raise CodecError
                if filters and not _matches(new, filters):
                    continue  # a truncated-index collision: another customer's value
                append(tuple(new))
        except BaseException:
            # The traceback keeps this frame: leave in it none of the rows decrypted so far,
            # nor this row's other values, nor the search's arguments.
            out.clear()
            new = []
            plaintext = b""
            filters = None
            raise
        return out

    def _retry(
        self, rows: Sequence[Any], filters: Filters | None, known: Known
    ) -> list[Any] | BaseException:
        """The slow path of a batch in which a value failed: each row again, and each value of a
        row that fails alone (``_salvage``), so the failure is named or replaced and the rest
        reads normally. Returns the rows, or the located error of the first value that must
        raise (``process`` raises it; nothing raised here carries a decrypted row along)."""
        cold = self._headers(rows) - known.keys()  # the fast path resolved the others
        if cold:
            known.update(self.ring.keys(cold))
        known.loaded = True
        out: list[tuple[Any, ...]] = []
        try:
            for row in rows:
                try:
                    (new,) = self._run((row,), None, self.groups, known, rows)
                except _FAILURES:
                    new = self._salvage(row, known)
                    if isinstance(new, BaseException):
                        out.clear()
                        return new
                if filters and not _matches(new, filters):
                    continue
                out.append(new)
        except BaseException:
            out.clear()
            new = ()
            filters = None
            raise
        return out

    def _salvage(self, row: Sequence[Any], known: Known) -> Any:
        """A row with a bad value, read value by value: the row with each bad value replaced
        (UNREADABLE), or the located error of the first bad value that must raise."""
        values = list(row)
        try:
            for subject_index, columns in self.groups:
                for column in columns:
                    index = column[0]
                    try:
                        (one,) = self._run((row,), None, ((subject_index, (column,)),), known, ())
                    except _FAILURES as exc:
                        value = self._failed(row, self.by_index[index], exc)
                        if isinstance(value, BaseException):
                            values.clear()
                            return value
                        values[index] = value
                    else:
                        values[index] = one[index]
        except BaseException:
            values.clear()
            one = ()
            raise
        return tuple(values)

    def _failed(self, row: Sequence[Any], slot: Slot, exc: BaseException) -> Any:
        """What a value that failed reads as: UNREADABLE (logged with its location, never its
        value) where the column or attachment says ``on_error="sentinel"``, else the located
        error to raise. The error is new: nothing of ``exc`` (whose traceback holds the row
        loop) goes with it."""
        where = slot.where(row)
        if isinstance(exc, SubjectShreddedError | RetentionExpiredError):  # strict
            return type(exc)(**where)
        error = DecryptionError(**where)
        if slot.on_error != "sentinel":
            return error
        log.warning("%s; read as UNREADABLE", error, extra=where)
        return UNREADABLE


def _refuse(value: Any) -> Any:
    raise DecryptionError


_SEALED_PREFIXES = (
    bytes((fmt.FORMAT_VERSION, fmt.SUITE_AES256GCM)),
    bytes((fmt.FORMAT_VERSION, fmt.SUITE_AES256GCM_PERIOD)),
)
# How a ccvault value begins: the version byte and a suite byte, or the version byte alone (the
# first two bytes of a value are all ``_sealed`` looks at).
_SEALED_STARTS = frozenset([*_SEALED_PREFIXES, bytes((fmt.FORMAT_VERSION,))])
_SEALED_TEXT = frozenset(start.decode("ascii") for start in _SEALED_STARTS)


def _sealed(value: bytes | str) -> bool:
    """Does ``value`` begin like a ccvault value, whatever its length? A truncated ciphertext (a
    column too narrow for it, a cut copy) is one, down to its first byte: never legacy."""
    if isinstance(value, str):
        return value[:2] in _SEALED_TEXT
    return value[:2] in _SEALED_STARTS


def _legacy_reader(col: ColumnPlan) -> Callable[[Any], Any]:
    """How a ``legacy_plaintext=True`` column reads a stored value that is no ciphertext of a
    known key: as the plaintext the column held before it was encrypted. Text columns take
    UTF-8 bytes or text, binary columns bytes, JSON columns JSON text, other types a value the
    driver already returns as the column's Python type (SQLite keeps an old INTEGER). Anything
    else is still a DecryptionError, and so is any value, bytes or text, that begins like a
    ccvault value (``_sealed``: a truncated or tampered ciphertext, one of an unknown or
    destroyed key) whatever its length, and JSON nested deeper than the parser goes
    (RecursionError, one of the reader's failures)."""

    def read(value: Any) -> Any:
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if _sealed(raw):
                raise DecryptionError
            if col.is_str:
                return raw.decode("utf-8")  # UnicodeDecodeError: DecryptionError
            if col.codec.name == "bytes":
                return raw
            if col.codec.name == "json":
                return json.loads(raw)  # a ValueError: DecryptionError
            raise DecryptionError
        if isinstance(value, str) and _sealed(value):
            raise DecryptionError
        if col.codec.name == "json" and isinstance(value, str):
            return json.loads(value)
        if isinstance(value, col.python_types) and not (
            col.rejects_bool and isinstance(value, bool)
        ):
            return value
        raise DecryptionError

    return read


def _matches(row: Sequence[Any], filters: Filters) -> bool:
    for search in filters:
        value = row[search.index]
        # an exact str: a sentinel (a str subclass) never matches, nor reaches the normaliser
        if type(value) is not str:
            return False
        if value not in search.given and not search.admits(value):
            return False
    return True


# -- building a reader for a compiled statement ------------------------------------------------

# The reader of a compiled statement, kept on it (as long as SQLAlchemy keeps the statement in
# its compiled cache) with the options it was built for: (ring, strict, on_error, reader).
_READER = "_ccvault_reader"


def _reader_for(ring: KeyRing, compiled: Any, strict: bool, on_error: OnError) -> Reader | None:
    cached = compiled.__dict__.get(_READER)
    if cached is not None and cached[0] is ring and cached[1] == strict and cached[2] == on_error:
        return cast("Reader | None", cached[3])
    reader = _build_reader(ring, compiled, strict, on_error)
    setattr(compiled, _READER, (ring, strict, on_error, reader))
    return reader


def _base(obj: Any) -> tuple[sa.Column[Any], Any] | None:
    """The table column behind a selected column element, and the FROM object it comes from."""
    if not isinstance(obj, ColumnElement):
        return None
    column = base_column(obj)
    if column is None:
        return None
    source = getattr(obj, "table", None)
    if source is not None and hasattr(source, "_deannotate"):
        source = source._deannotate()
    return column, source


def _build_reader(
    ring: KeyRing, compiled: Any, strict: bool, on_error: OnError = "raise"
) -> Reader | None:
    entries = getattr(compiled, "_result_columns", None)
    if not entries or not any(isinstance(e.type, Encrypted) for e in entries):
        return None
    bases: list[tuple[sa.Column[Any], Any] | None] = []
    for entry in entries:
        found = None
        for obj in entry.objects:
            found = _base(obj)
            if found is not None:
                break
        bases.append(found)
    slots = []
    for i, (entry, base) in enumerate(zip(entries, bases, strict=True)):
        if not isinstance(entry.type, Encrypted):
            continue
        if base is None:
            raise DecryptionError  # an encrypted value with no column to give its context
        column, source = base
        plan = plan_for(column.table)
        col = plan.by_key.get(column.key) if plan is not None else None
        if plan is None or col is None:
            raise DecryptionError
        primary_key: list[tuple[int, Callable[[Any], Any] | None]] | None = []
        for key_column in column.table.primary_key.columns:
            j = _position(bases, key_column, source)
            if j is None or primary_key is None:
                primary_key = None
                continue
            impl = entries[j].type.dialect_impl(compiled.dialect)
            primary_key.append((j, impl.result_processor(compiled.dialect, None)))
        slots.append(
            Slot(
                i,
                col,
                _position(bases, plan.subject, source),
                strict or col.etype.strict,
                col.etype.on_error or on_error,
                tuple(primary_key) if primary_key else None,
            )
        )
    return Reader(ring, slots, _index_terms(compiled, bases, slots), len(entries))


def _position(
    bases: list[tuple[sa.Column[Any], Any] | None], column: Any, source: Any
) -> int | None:
    """Where the row holds ``column`` of the same FROM object, if the statement selects it."""
    for j, other in enumerate(bases):
        if other is not None and other[0] is column and other[1] is source:
            return j
    return None


def _index_terms(
    compiled: Any, bases: list[tuple[sa.Column[Any], Any] | None], slots: list[Slot]
) -> list[_IndexTerm]:
    """Blind-index terms a post-filter can check: ANDed ``==``/``IN`` of a plain entity select
    (no LIMIT/OFFSET, no GROUP BY) whose encrypted column is selected from the same table."""
    stmt = getattr(compiled, "statement", None)
    if not isinstance(stmt, sa.Select):
        return []
    if stmt._limit_clause is not None or stmt._offset_clause is not None:
        return []
    if stmt._group_by_clauses:
        return []
    terms = []
    for crit in _conjuncts(stmt._where_criteria):
        if not isinstance(crit, BinaryExpression) or crit.operator not in (
            operators.eq,
            operators.in_op,
        ):
            continue
        left, right = crit.left, crit.right
        if not isinstance(right, BindParameter) or not isinstance(
            getattr(left, "type", None), BlindIndex
        ):
            continue
        base = _base(left)
        if base is None:
            continue
        index_col, source = base
        for slot in slots:
            if (
                slot.col.index_key == index_col.key
                and slot.col.column.table is index_col.table
                and bases[slot.index] is not None
                and bases[slot.index][1] is source  # type: ignore[index]
            ):
                name = compiled.bind_names.get(right)
                if name is not None:
                    index_type = cast(BlindIndex, left.type)
                    terms.append(_IndexTerm(slot.index, index_type.norm, name))
    return terms


def _conjuncts(criteria: Any) -> list[Any]:
    out: list[Any] = []
    for crit in criteria:
        if isinstance(crit, BooleanClauseList) and crit.operator is operators.and_:
            out.extend(_conjuncts(crit.clauses))
        else:
            out.append(crit)
    return out


# -- the fetch strategy -------------------------------------------------------------------------


class _DecryptingFetch(_cursor.CursorFetchStrategy):
    __slots__ = (
        "_buffer",
        "_chunk",
        "_exhausted",
        "_filters",
        "_inner",
        "_reader",
        "alternate_cursor_description",
    )

    def __init__(self, inner: Any, reader: Reader, filters: Filters) -> None:
        self._inner = inner
        self._reader = reader
        self._filters = filters
        self._buffer: collections.deque[Any] = collections.deque()
        self._exhausted = False
        self._chunk = _READ_AHEAD
        self.alternate_cursor_description = inner.alternate_cursor_description

    def soft_close(self, result: Any, dbapi_cursor: Any) -> None:
        self._exhausted = True
        if not self._buffer:
            result.cursor_strategy = _cursor._NO_CURSOR_DQL

    def hard_close(self, result: Any, dbapi_cursor: Any) -> None:
        self._exhausted = True
        self._buffer.clear()
        result.cursor_strategy = _cursor._NO_CURSOR_DQL

    def handle_exception(self, result: Any, dbapi_cursor: Any, err: BaseException) -> Any:
        return self._inner.handle_exception(result, dbapi_cursor, err)

    def yield_per(self, result: Any, dbapi_cursor: Any, num: int) -> None:
        # A buffered strategy may already hold rows it read ahead: carry them over.
        pending = getattr(self._inner, "_rowbuffer", None)
        self._inner = _cursor.BufferedRowCursorFetchStrategy(
            dbapi_cursor,
            {"max_row_buffer": num},
            initial_buffer=collections.deque(pending or ()),
            growth_factor=0,
        )
        self._chunk = num

    def _pull(self, result: Any, dbapi_cursor: Any, size: int | None) -> list[Any]:
        while not self._exhausted:
            raw = self._inner.fetchmany(result, dbapi_cursor, size)
            rows = self._reader.process(raw, self._filters)
            if rows or not raw:
                return rows
            # every row of this batch was a filtered-out collision: read on
        return []

    def fetchone(self, result: Any, dbapi_cursor: Any, hard_close: bool = False) -> Any:
        if not self._buffer:
            self._buffer.extend(self._pull(result, dbapi_cursor, self._chunk))
            if not self._buffer:
                result._soft_close(hard=hard_close)
                return None
        row = self._buffer.popleft()
        if self._exhausted and not self._buffer:
            result.cursor_strategy = _cursor._NO_CURSOR_DQL
        return row

    def fetchmany(self, result: Any, dbapi_cursor: Any, size: int | None = None) -> Any:
        if not self._buffer:
            rows = self._pull(result, dbapi_cursor, size)
            if not rows:
                result._soft_close()
            return rows
        n = len(self._buffer) if size is None else min(size, len(self._buffer))
        rows = [self._buffer.popleft() for _ in range(n)]
        if self._exhausted and not self._buffer:
            result.cursor_strategy = _cursor._NO_CURSOR_DQL
        return rows

    def fetchall(self, result: Any, dbapi_cursor: Any) -> Any:
        # The rest is decrypted before the read-ahead rows are taken: a bad value raises from
        # here with no decrypted row in this frame.
        rows = []
        if not self._exhausted:
            raw = self._inner.fetchall(result, dbapi_cursor)
            rows = self._reader.process(raw, self._filters)
        if self._buffer:
            rows[:0] = self._buffer
            self._buffer.clear()
        result._soft_close()
        result.cursor_strategy = _cursor._NO_CURSOR_DQL
        return rows


def after_cursor_execute(
    ring: KeyRing,
    strict: bool,
    on_error: OnError,
    conn: Any,
    cursor: Any,
    statement: Any,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    compiled = getattr(context, "compiled", None)
    if compiled is None or cursor.description is None:
        if conn._echo:
            _log_rows(conn, None)
        return
    reader = _reader_for(ring, compiled, strict, on_error)
    if conn._echo:  # the engine logs (echo=True or "debug", or the sqlalchemy.engine logger)
        _log_rows(conn, compiled if reader is not None else None)
    if reader is None:
        return
    if context.execute_style is ExecuteStyle.INSERTMANYVALUES:
        _decrypt_returning(context, reader)
        return
    inner = context.cursor_fetch_strategy
    if inner is _cursor._DEFAULT_FETCH and (
        context._is_server_side or context.execution_options.get("stream_results", False)
    ):
        inner = _cursor.BufferedRowCursorFetchStrategy(cursor, context.execution_options)
    context.cursor_fetch_strategy = _DecryptingFetch(inner, reader, reader.filters(context))


def _decrypt_returning(context: Any, reader: Reader) -> None:
    """An INSERT of many rows with RETURNING (SQLAlchemy's "insertmanyvalues"): SQLAlchemy
    gathers the rows of each batch itself (``context.fetchall_for_returning``, right after this
    hook) and reads the result from a buffer of its own, made after the last batch, which no
    fetch strategy set here reaches. Each batch's rows are decrypted as they are gathered."""
    if "fetchall_for_returning" in vars(context):  # wrapped at the first batch
        return
    fetch = context.fetchall_for_returning

    def fetchall_for_returning(cursor: Any, **kw: Any) -> Any:
        return reader.process(fetch(cursor, **kw))

    context.fetchall_for_returning = fetchall_for_returning


# -- result rows in SQLAlchemy's DEBUG log ------------------------------------------------------

# The Connection method SQLAlchemy's row logging calls: ``CursorResult`` binds
# ``connection._log_debug`` when it is built, right after ``after_cursor_execute``, and logs
# each row ("Row %r") through it *after* the fetch strategy decrypted the row.
_LOG_DEBUG = "_log_debug"
_ROW_MESSAGE = "Row %r"
_MAX_CHARS = 300  # as SQLAlchemy shows a logged value


class _Encrypted:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<encrypted>"


_ENCRYPTED = _Encrypted()


class _LoggedRow:
    """A result row as the DEBUG log shows it: each value of an encrypted column replaced by
    ``<encrypted>``, the others as SQLAlchemy shows them (formatted only if a handler emits)."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values

    @safe_repr
    def __repr__(self) -> str:
        shown = []
        for value in self.values:
            text = repr(value)
            if len(text) > _MAX_CHARS:
                cut = len(text) - _MAX_CHARS
                text = f"{text[:150]} ... ({cut} characters truncated) ... {text[-150:]}"
            shown.append(text)
        return f"({', '.join(shown)}{',' if len(shown) == 1 else ''})"


_HIDDEN_ROW = _LoggedRow((_ENCRYPTED,))


def _logged_row(shown: Any, keys: frozenset[str]) -> _LoggedRow:
    """What to log for SQLAlchemy's view of a row: the values of ``keys`` (the result keys of
    encrypted columns) hidden; the whole row hidden if it is not the Row SQLAlchemy passes."""
    row = getattr(shown, "row", None)
    fields = getattr(row, "_fields", None)
    if row is None or not isinstance(fields, tuple) or len(fields) != len(row):
        return _HIDDEN_ROW
    return _LoggedRow(
        tuple(_ENCRYPTED if k in keys else v for k, v in zip(fields, row, strict=True))
    )


def _log_rows(conn: Any, compiled: Any) -> None:
    """Make the rows of the result being built on ``conn`` log with the values of encrypted
    columns hidden (``compiled`` returns some), or as SQLAlchemy logs them (None).

    Called only while the connection logs (``conn._echo``); costs nothing otherwise. The
    redacting logger is bound to this one statement, as SQLAlchemy's row logger is to this one
    result, and replaced at the next execution on the connection."""
    conn.__dict__.pop(_LOG_DEBUG, None)
    if compiled is None:
        return
    keys = frozenset(
        key
        for entry in compiled._result_columns
        if isinstance(entry.type, Encrypted)
        for key in (entry.keyname, entry.name)
    )
    log_debug = getattr(conn, _LOG_DEBUG)  # the Connection's own method

    def redacting(message: str, *args: Any, **kw: Any) -> None:
        if message == _ROW_MESSAGE and args:
            args = (_logged_row(args[0], keys),)
        log_debug(message, *args, **kw)

    setattr(conn, _LOG_DEBUG, redacting)
