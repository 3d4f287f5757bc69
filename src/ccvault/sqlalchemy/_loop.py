"""The read loop of one compiled statement, generated for its columns.

A statement's encrypted columns are fixed when it is compiled: where each sits in the row,
where its subject sits, its context and codec. :func:`compile_loop` writes the row loop for
exactly those columns — one block per column, the indexes and the codec of each written into
the code — so that no row pays for the branching of a loop that must handle every statement.

The generated loop handles the common value only: a ``bytes`` value (a buffer is copied) whose
key is live. Where the row holds the subject, the key must belong to it: the row's subject is
the one the key remembers (``key.checked``: equal and of the same type, or the text of a
remembered UUID, ``UUID_HEX``), or else ``check()`` compares their refs (DecryptionError for
a value of another subject). A row with any other value — no key or an unknown one, a shredded
or expired tombstone, text in a legacy column — is handed whole to the generic loop (``slow``),
which decides it exactly as before. A value that fails (a wrong tag, a bad codec byte) raises
one of the reader's failures, like the generic loop, and the reader's slow path locates it.
Whatever leaves the loop, it clears what it decrypted first.

The code is generated from the column layout only: integers (row indexes and entry offsets)
and the names of constants bound in its namespace; no value, label or key reaches the source.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Final

from ..crypto import _format as fmt
from ._codec import STR, CodecError

__all__ = ["UUID_HEX", "Column", "Group", "Loop", "Slow", "compile_loop"]


# A row the generated loop leaves to the generic one (never leaves the loop).
class Slow(Exception):
    __slots__ = ()


_H1 = slice(0, fmt.SUITE1_HEADER_BYTES)
_H2 = slice(0, fmt.SUITE2_HEADER_BYTES)
_SUITE_AT = slice(1, 2)
_SUITE2 = bytes((fmt.SUITE_AES256GCM_PERIOD,))

# A UUID subject as a database returns it in text: SQLite (SQLAlchemy's ``Uuid`` as CHAR(32))
# its 32 hex digits, ``UUID_HEX % u.int`` (``u.hex`` without the property's Python frame);
# MariaDB's UUID type the same digits with 4 hyphens (``str(u)``). A key remembers the subject it
# was written or read for (``key.checked``); a row's subject that is a ``str`` of those 32 digits
# of a remembered ``uuid.UUID``, or of 36 characters that are those digits once its hyphens are
# removed, is that subject, with no ref lookup: only a ``uuid`` installation gives a UUID a ref
# (``str``, ``int`` and tuple types refuse one), and it reads such text back as the same UUID
# (``uuid.UUID`` drops every hyphen: the same 128-bit value, the same canonical bytes, the same
# ref). Any other text (upper case, braces, another UUID's digits) is checked by its ref.
UUID_HEX: Final = "%032x"

# What the row loops (this one and the reader's generic one) need of one encrypted column,
# unpacked in one step: its index in the row, u32(len(label)) || label, the codec's loads (None
# for str, decoded inline), strictness, what to do with a stored value that is no ciphertext
# (raise, or the legacy_plaintext reader), whether the column is retention-bound (its values
# looked up by their suite first).
Column = tuple[int, bytes, Callable[[bytes], Any] | None, bool, Callable[[Any], Any], bool]
# The encrypted columns whose subject is at one index of the row (None: not selected).
Group = tuple[int | None, tuple[Column, ...]]
Loop = Callable[..., list[tuple[Any, ...]]]


def compile_loop(
    groups: Sequence[Group],
    width: int,
    matches: Callable[[Sequence[Any], Any], bool] | None,
) -> Loop:
    """The row loop of a statement whose rows are ``width`` values long and whose encrypted
    columns are ``groups`` (by subject index). ``matches``: the statement has blind-index
    terms whose decrypted values must match (``matches(row, filters)``), else None.

    The loop is called as ``loop(rows, filters, known, cached, reader)``: ``known`` the
    batch's keys by header (a dict), ``cached`` the ring's lookup, and of ``reader``, on rare
    paths only (no call on a row whose keys are cached and remember its subject):
    ``reader.load(rows, known)`` loads every key of the batch into ``known`` once (True when
    it did), ``reader.slow(row, rows, filters, known, cached)`` the generic loop of one row
    (a list of zero or one row), ``reader.check(key, subject)`` raises DecryptionError unless
    ``key`` belongs to ``subject`` (and remembers the subject on the key when it does)."""
    contexts: list[bytes] = []
    for _, columns in groups:
        for column in columns:
            if column[1] not in contexts:
                contexts.append(column[1])
    namespace: dict[str, Any] = {
        "Slow": Slow,
        "CodecError": CodecError,
        "H1": _H1,
        "H2": _H2,
        "SUITE_AT": _SUITE_AT,
        "SUITE2": _SUITE2,
        "BUFFERS": (bytearray, memoryview),
        "UUID": uuid.UUID,
        "HEX": UUID_HEX,
        "matches": matches,
    }
    code: list[str] = []
    emit = code.append
    # a value whose key is not cached live: through the batch's keys (one key-store query for
    # all of the batch's cold keys), or the generic loop
    emit("def resolve(b, rows, known, cached, reader, entries):")
    emit(" header = b[H2] if b[SUITE_AT] == SUITE2 else b[H1]")
    emit(" key = known.get(header)")
    emit(" if key is None:")
    emit("  key = cached(header)")
    emit("  if key is None and reader.load(rows, known):")
    emit("   key = known.get(header)")
    emit("  if key is None:")
    emit("   raise Slow")
    emit("  known[header] = key")
    emit(" if key.aead is None:")  # a tombstone: the generic loop reads its sentinel or raises
    emit("  raise Slow")
    emit(" entries[header] = key")
    emit(" return key")
    emit("def loop(rows, filters, known, cached, reader):")
    emit(" entries = {}")
    emit(" get = entries.get")
    emit(" out = []")
    emit(" append = out.append")
    emit(" values = ()")
    emit(" p = b''")
    emit(" try:")
    emit("  for row in rows:")
    emit("   try:")
    computed: dict[int, str] = {}
    for g, (subject_index, columns) in enumerate(groups):
        if subject_index is not None:
            emit(f"    s = row[{subject_index}]")
            emit("    verified = None")
        for index, ctx_lp, loads, _strict, _unsealed, by_period in columns:
            name = f"v{index}"
            computed[index] = name
            emit(f"    b = row[{index}]")
            emit("    if b is None:")
            emit(f"     {name} = None")
            emit("    else:")
            emit("     if type(b) is not bytes:")
            emit("      if not isinstance(b, BUFFERS):")
            emit("       raise Slow")
            emit("      b = bytes(b)")
            if by_period:
                emit("     h = b[H2] if b[SUITE_AT] == SUITE2 else b[H1]")
            else:
                emit("     h = b[H1]")
            emit("     key = get(h)")
            emit("     if key is None:")
            # warm: the ring's cache has the live key; anything else resolves through the batch
            emit("      key = cached(h)")
            emit("      if key is None or key.aead is None:")
            emit("       key = resolve(b, rows, known, cached, reader, entries)")
            emit("      else:")
            emit("       entries[h] = key")
            if subject_index is not None:
                emit("     if key is not verified:")
                emit("      c = key.checked")
                # equal and of the same type (1 == 1.0 == True in Python: one is the subject)
                emit("      if c is not s:")
                emit("       t = type(s)")
                emit("       if type(c) is not t:")
                # the hex digits SQLite and MariaDB return for the UUID the key remembers
                # (UUID_HEX): remembered from now on, as check() would remember them
                emit("        if t is str and type(c) is UUID and (")
                emit("          s == (h := HEX % c.int)")
                emit("          or (len(s) == 36 and s.replace('-', '') == h)):")
                emit("         key.checked = s")
                emit("        else:")
                emit("         reader.check(key, s)")
                emit("       elif t is UUID:")  # UUID.__eq__ compares .int, in a Python frame
                emit("        if c.int != s.int:")
                emit("         reader.check(key, s)")
                emit("       elif c != s:")
                emit("        reader.check(key, s)")
                emit("      elif c is None:")  # no subject remembered, none in the row
                emit("       reader.check(key, s)")
                emit("      verified = key")
            ctx = f"CTX{contexts.index(ctx_lp)}"
            namespace[ctx] = ctx_lp
            emit("     p = key.decrypt(b[key.nonce_at], b[key.body_at],")
            emit(f"      key.ads.get({ctx}) or key.associated_data({ctx}))")
            if loads is None:
                emit(f"     if not p or p[0] != {STR.tag}:")
                emit("      raise CodecError")
                emit(f"     {name} = p.decode()[1:]")
            else:
                namespace[f"loads{index}"] = loads
                emit(f"     {name} = loads{index}(p)")
        del g
    parts = [computed.get(i, f"row[{i}]") for i in range(width)]
    emit(f"    values = ({', '.join(parts)},)")
    emit("   except Slow:")
    emit("    for values in reader.slow(row, rows, filters, known, cached):")
    emit("     append(values)")
    emit("    continue")
    if matches is not None:
        emit("   if filters and not matches(values, filters):")
        emit("    continue")
    emit("   append(values)")
    emit(" except BaseException:")
    # nothing decrypted stays in this frame (a traceback keeps it): the rows, the row, the
    # plaintext, each column's value, the search's arguments
    emit("  out.clear()")
    emit("  values = ()")
    emit("  p = b''")
    for name in computed.values():
        emit(f"  {name} = None")
    emit("  filters = None")
    emit("  raise")
    emit(" return out")
    exec(compile("\n".join(code), "<ccvault read loop>", "exec"), namespace)  # noqa: S102
    loop: Loop = namespace["loop"]
    return loop
