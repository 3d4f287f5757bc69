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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from ..vault import Vault

__all__ = ["SubjectMatch", "ref_of", "subject_match"]


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


def ref_of(vault: Vault, stored: object) -> bytes | None:
    """The ref of a stored subject value; None for one that is no valid subject ('' or not
    text), which is never the subject looked for."""
    try:
        return vault.subject_ref(stored)
    except TypeError:
        return None
