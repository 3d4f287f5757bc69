"""``safe_repr``: a ``__repr__`` that never raises, even on a half-initialised object.

Error reports show the locals of every frame of a traceback, ``self`` in the ``__init__`` that
raised among them: ``traceback.TracebackException(..., capture_locals=True)`` calls ``repr`` on
each (unguarded before Python 3.13), and so do error trackers. A ``__repr__`` that reads an
attribute ``__init__`` had not set yet would make the report itself fail, hiding the error it
was about. Every ``__repr__`` in ccvault that reads its object's state is wrapped in this.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

__all__ = ["safe_repr"]

T = TypeVar("T")


def safe_repr(method: Callable[[T], str]) -> Callable[[T], str]:
    """``method``, or ``<ClassName (incomplete)>`` when it raises: nothing of the object's
    state, which may be anything while it is half-built."""

    @functools.wraps(method)
    def __repr__(self: T) -> str:
        try:
            return method(self)
        except Exception:
            return f"<{type(self).__qualname__} (incomplete)>"

    return __repr__
