"""The values a column read returns instead of data: ``SHREDDED``, ``EXPIRED``, ``UNREADABLE``.

Each sentinel is the one instance of a :class:`Sentinel` subclass. A sentinel is a ``str`` whose
text is its documented rendering (``"[shredded]"``, ``"[unreadable]"``), so that it passes a
``str`` field of a pydantic, SQLModel or FastAPI model and ``json.dumps`` writes it as that text:
an API listing customers answers 200 when one of them is erased. It is still no data:

* it is falsy (``if customer.phone:`` skips it) and its ``repr`` is its name (``SHREDDED``);
* test for it with ``value is SHREDDED`` or ``isinstance(value, Sentinel)``, never with ``==``
  (it equals its rendering, like any str);
* every write path refuses it: the column types' write hook and bind processors, blind-index
  search arguments (ccvault.sqlalchemy);
* it pickles and copies to the same instance.

The access issue adds ``DENIED`` as a further subclass.

It also holds :data:`NO_SUBJECT`, the marker a *caller* passes as the subject of vault-wide
data (no read sentinel: it is never a value), here so that the key ring and the column types
share it without importing the vault. This module is a leaf: it imports nothing of ccvault and
nothing of SQLAlchemy.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, TypeVar

__all__ = [
    "EXPIRED",
    "NO_SUBJECT",
    "SHREDDED",
    "UNREADABLE",
    "Expired",
    "Sentinel",
    "Shredded",
    "Unreadable",
    "refusal",
]

_S = TypeVar("_S", bound="Sentinel")


class Sentinel(str):
    """Base of the read sentinels: a falsy ``str`` singleton per subclass.

    A subclass names itself and its rendering: ``class Expired(Sentinel, name="EXPIRED",
    text="[expired]")``, and its module defines ``EXPIRED: Final = Expired()`` under that same
    name (pickling refers to the instance by module and name).
    """

    __slots__ = ()
    _name: ClassVar[str] = ""
    _text: ClassVar[str] = ""
    _instance: ClassVar[Sentinel | None] = None

    def __init_subclass__(cls, *, name: str, text: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not name.isidentifier() or not text:
            raise ValueError("a sentinel needs an identifier as its name and a rendering")
        cls._name = name
        cls._text = text
        cls._instance = None

    def __new__(cls: type[_S]) -> _S:
        instance = cls.__dict__.get("_instance")
        if instance is None:
            if not cls._name:
                raise TypeError("Sentinel is abstract: use SHREDDED, UNREADABLE, ...")
            instance = super().__new__(cls, cls._text)
            cls._instance = instance
        return instance

    def __repr__(self) -> str:
        return self._name

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        # pickled by name: unpickles to the module's one instance
        return self._name

    def __copy__(self: _S) -> _S:
        return self

    def __deepcopy__(self: _S, memo: Any) -> _S:
        return self


class Shredded(Sentinel, name="SHREDDED", text="[shredded]"):
    """The value of an encrypted column whose data subject was shredded (see :data:`SHREDDED`)."""

    __slots__ = ()


class Expired(Sentinel, name="EXPIRED", text="[expired]"):
    """The value of an encrypted column whose retention period expired (see :data:`EXPIRED`)."""

    __slots__ = ()


class Unreadable(Sentinel, name="UNREADABLE", text="[unreadable]"):
    """A value that failed to decrypt where the column or attachment says
    ``on_error="sentinel"`` (see :data:`UNREADABLE`)."""

    __slots__ = ()


SHREDDED: Final = Shredded()
"""Reads of a shredded customer's values return this (unless the column or attachment is
strict): falsy, renders as ``"[shredded]"``, refused by every write."""

EXPIRED: Final = Expired()
"""Reads of a value whose retention period expired (its period secret destroyed by
``enforce_retention``, and its subject not held) return this unless strict: falsy, renders as
``"[expired]"``, refused by every write."""

UNREADABLE: Final = Unreadable()
"""Reads of a value that fails to decrypt (tampered, truncated, an unknown key, another
customer's value) return this where ``on_error="sentinel"``; renders as ``"[unreadable]"``."""


def refusal(value: Sentinel) -> str:
    """Why a write refuses ``value``: "a shredded value (SHREDDED) cannot be written back..."."""
    kind = value._name.lower()
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind} value ({value!r}) cannot be written back: a read sentinel is no data"


class _NoSubject:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_SUBJECT"


NO_SUBJECT: Final = _NoSubject()
"""Pass as the subject to encrypt with the context's vault-wide key (data of no one customer)."""
