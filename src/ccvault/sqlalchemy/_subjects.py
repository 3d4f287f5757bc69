"""Owns how a subject's rows are found in a table by its subject column: the database's
comparison as a prefilter, then exactly the stored values whose ref is the subject's.
Must not write, lock or decrypt: the shred sweep, its dry run and the subject export build on it.

``int`` and ``uuid`` subjects compare exactly in every database. ``str`` subjects do not: no
database normalises Unicode, and MariaDB/MySQL's default collations ignore case and trailing
spaces. So for ``str`` the database selects candidates (the subject as given, its NFC and NFD
forms) and :meth:`SubjectMatch.owns` keeps the rows whose stored value maps to the subject's
ref (docs/sqlalchemy.md, "How subjects are compared").
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["SubjectMatch", "SubjectsMatch", "ref_of", "subject_match", "subjects_match"]

_CHUNK = 500  # values per IN (...) of a batched sweep


@dataclass(frozen=True, slots=True)
class SubjectMatch:
    """One subject as the rows of a table hold it: its value coerced to the installation's type,
    its ref, and for ``str`` subjects the stored forms the database is asked for."""

    vault: Vault
    value: object
    ref: bytes
    forms: tuple[str, ...] | None  # None: the database's equality is exact (int, uuid)

    def where(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """The condition that selects the subject's rows (and, for ``str``, candidates that
        :meth:`owns` must confirm)."""
        if self.forms is None:
            return column == self.value
        return column.in_(self.forms)

    def owns(self, stored: object) -> bool:
        """Whether a stored subject value is this subject (always, for exact comparisons)."""
        return self.forms is None or ref_of(self.vault, stored) == self.ref

    def count(self, conn: sa.Connection, column: sa.Column[Any]) -> int:
        """How many rows of ``column``'s table are the subject's: the rows the sweep clears
        (counted by the database for exact comparisons; for ``str``, the candidates' stored
        values confirmed by :meth:`owns`, as the sweep confirms them)."""
        if self.forms is None:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(column.table).where(self.where(column))
                ).scalar_one()
            )
        stored = Counter(conn.execute(sa.select(column).where(self.where(column))).scalars())
        return sum(n for value, n in stored.items() if self.owns(value))


def subject_match(vault: Vault, subject: object) -> SubjectMatch:
    """The match of ``subject``; TypeError for a subject the installation's type refuses."""
    value = vault.subject_type.coerce(subject)
    ref = vault.subject_ref(subject)
    forms: tuple[str, ...] | None = None
    if vault.subject_type.spec == "str":
        assert isinstance(value, str)
        # the stored forms that can map to the subject's ref: canonical NFC, NFD, and the form
        # the caller passed; compared exactly in Python after the database's prefilter
        forms = tuple(sorted({value, unicodedata.normalize("NFD", value), str(subject)}))
    return SubjectMatch(vault, value, ref, forms)


@dataclass(frozen=True, slots=True)
class SubjectsMatch:
    """Many subjects as the rows of a table hold them (the sweep of a shred, of one subject or
    of a ``shred_many`` batch): the database is asked for ``values`` (the coerced subjects, or
    for ``str`` every stored form of each), 500 per statement; for ``str``, :meth:`owns` then
    keeps the stored values whose ref is one of ``refs``."""

    vault: Vault
    values: tuple[object, ...]
    refs: frozenset[bytes]
    exact: bool  # the database's equality is exact (int, uuid): no owns() check needed

    def chunks(self) -> Iterator[list[object]]:
        """The values, 500 at a time (one ``IN (...)`` each)."""
        for i in range(0, len(self.values), _CHUNK):
            yield list(self.values[i : i + _CHUNK])

    def owns(self, stored: object) -> bool:
        """Whether a stored subject value is one of the subjects."""
        return self.exact or ref_of(self.vault, stored) in self.refs


def subjects_match(vault: Vault, subjects: Sequence[object]) -> SubjectsMatch:
    """The match of all of ``subjects``; TypeError for one the installation's type refuses."""
    matches = [subject_match(vault, s) for s in subjects]
    values: dict[object, None] = {}  # ordered, without repeats
    for m in matches:
        values.update(dict.fromkeys((m.value,) if m.forms is None else m.forms))
    return SubjectsMatch(
        vault,
        tuple(values),
        frozenset(m.ref for m in matches),
        exact=all(m.forms is None for m in matches),
    )


def ref_of(vault: Vault, stored: object) -> bytes | None:
    """The ref of a stored subject value; None for one that is no valid subject ('' or not
    text), which is never the subject looked for."""
    try:
        return vault.subject_ref(stored)
    except TypeError:
        return None
