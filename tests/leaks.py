"""Is key material reachable from an exception? What an error reporter capturing locals would send.

from leaks import raised, secrets_in

exc = raised(lambda: kms.wrap(key, context=CTX))
assert secrets_in(exc, key.reveal()) == []
"""

from __future__ import annotations

import base64
import builtins
import contextlib
from collections.abc import Callable

_SCALARS = (str, bytes, bytearray, memoryview, int, float, bool, type(None))
_MAX_DEPTH = 5  # how deep into containers and closure cells a value is followed
_GROUP = getattr(builtins, "BaseExceptionGroup", None)  # Python 3.11+


def secret_forms(secret: bytes) -> list[str]:
    """The text forms ``secret`` can take: hex (either case), base64 (standard or URL-safe, with
    or without padding) and the body of its repr."""
    b64, urlsafe = base64.b64encode(secret).decode(), base64.urlsafe_b64encode(secret).decode()
    return [
        secret.hex(),
        secret.hex().upper(),
        b64,
        urlsafe,
        b64.rstrip("="),
        urlsafe.rstrip("="),
        repr(secret)[2:-1],
    ]


def secrets_in(exc: BaseException, secret: bytes) -> list[str]:
    """Where ``secret`` (raw, hex or base64, also inside a repr) is reachable from ``exc``: its
    text, arguments, attributes and notes, the locals (and the closure cells of functions among
    them) of every frame of its traceback, and the same for every exception it leads to: its
    ``__cause__``, its ``__context__`` *even when* ``raise ... from None`` suppressed it (the
    context is still attached, and error trackers such as Sentry send it), and the members of an
    exception group. Returns the places it was found; ``[]`` when there are none."""
    text = secret_forms(secret)
    raw = [secret, *(form.encode() for form in text)]
    found: list[str] = []
    # id -> the shallowest depth a value was checked at; the values are kept alive in ``held`` so
    # that no id is reused by a later object (which would then be skipped).
    checked: dict[int, int] = {}
    held: list[object] = []

    def check(where: str, value: object, depth: int = 0) -> None:
        if depth > _MAX_DEPTH or checked.get(id(value), _MAX_DEPTH + 1) <= depth:
            return
        checked[id(value)] = depth
        held.append(value)
        if isinstance(value, bytes | bytearray | memoryview):
            if any(needle in bytes(value) for needle in raw):
                found.append(where)
            return
        if isinstance(value, str):
            shown = value
        elif isinstance(value, _SCALARS):
            return
        else:
            try:
                shown = repr(value)
            except Exception:
                shown = ""
        if any(needle in shown for needle in text):
            found.append(where)
        if isinstance(value, dict):
            for k, v in value.items():
                check(f"{where}[{k!r}]", k, depth + 1)
                check(f"{where}[{k!r}]", v, depth + 1)
        elif isinstance(value, list | tuple | set | frozenset):
            for i, v in enumerate(value):
                check(f"{where}[{i}]", v, depth + 1)
        for cell in getattr(value, "__closure__", None) or ():
            with contextlib.suppress(ValueError):  # an empty cell
                check(f"{where}.<closure>", cell.cell_contents, depth + 1)

    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        error = chain.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        kind = type(error).__name__
        check(f"{kind} text", str(error))
        check(f"{kind}.args", error.args)
        check(f"{kind}.__dict__", dict(getattr(error, "__dict__", {})))  # __notes__ among them
        tb = error.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            for name, value in frame.f_locals.items():
                check(f"{kind}: {frame.f_code.co_name}.{name}", value)
            tb = tb.tb_next
        # __context__ whatever __suppress_context__ says: "from None" only hides it from the
        # default traceback printer.
        chain += [error.__context__, error.__cause__]
        if _GROUP is not None and isinstance(error, _GROUP):
            chain += list(error.exceptions)
    return found


def raised(call: Callable[..., object]) -> BaseException:
    """The exception ``call()`` raises (caught here, so its traceback starts in this frame and no
    test frame joins it)."""
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("the call did not fail")


def chain_text(exc: BaseException) -> str:
    """Every text an error reporter shows of ``exc`` and of each exception in its cause and
    context chain: type name, message, repr and the repr of its arguments."""
    out: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        out += [type(current).__name__, str(current), repr(current), repr(current.args)]
        stack += [current.__cause__, current.__context__]
    return "\n".join(out)
