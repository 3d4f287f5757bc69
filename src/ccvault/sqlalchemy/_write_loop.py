"""The write loop of one table plan, generated for its encrypted columns.

A table's encrypted columns are fixed by its plan: their keys in the parameters, their contexts,
which take str, which have a blind index, their most characters. :func:`compile_write_loop`
writes the INSERT row loop for exactly those columns — one block per column, each column's
constants bound in the loop's namespace — so that no row pays for the branching of the generic
row function (``_write._encrypt_row``), which must handle every table and every value.

The generated loop handles the common row only: its subject is set (not NULL) and the statement
found its key (``keys``, one a row); each encrypted column is missing, None, a ``str`` of a str
column (within its most characters, UTF-8 encodable), or a value of a non-str column (encoded by
the same ``dumps`` as the generic function, which raises the same errors). A row with anything else
— no subject or a NULL one, a key not loaded, a ``Sealed`` value, a too-long string, a lone
surrogate, a value of a retention-bound column, a non-``str`` value of a searchable column — is
handed whole to the generic function (``slow``), which decides it exactly as before. Every check
of a row runs before anything of it is sealed: a row handed over has drawn no nonce and its
output is built by the generic function alone. The hand-over happens outside any exception
handler, so its errors are chained to nothing that holds a value. Whatever leaves the loop
raised, it clears the plaintext it encoded first.

The code is generated from the column layout only: integers (column positions) and the names of
constants bound in its namespace; no value, label, column key or key material reaches the source.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._codec import STR
from ._plan import TablePlan
from ._types import IndexValue, Sealed

__all__ = ["WriteLoop", "compile_write_loop"]

_STR = bytes((STR.tag,))

# loop(rows, keys, nonces, indexers, slow) -> the encrypted copies of ``rows``; ``keys`` one a row
WriteLoop = Callable[..., list[dict[str, Any]]]


def compile_write_loop(
    plan: TablePlan,
    dumps: Callable[[Any, Any], bytes],
    driver: type[bytes] | type[bytearray] | None = None,
) -> WriteLoop:
    """The INSERT row loop of ``plan``'s table; ``dumps(col, value)`` is the generic function's
    encoder of a value that is not the common ``str`` (``_write._dumps``).

    ``driver`` None: the loop marks what it writes (``Sealed`` ciphertexts, ``IndexValue``
    indexes) for the columns' bind step, which checks and copies each. ``bytes`` or
    ``bytearray``: the loop writes the driver's own type, for a statement whose encrypted and
    blind-index columns bind without a bind step (``_write._prepared``); then every value it
    does not write itself — a ``Sealed`` value given in a row, a blind index given without its
    column's value — is the generic function's (whose output the caller passes through the
    columns' bind step), so no value of those columns leaves the loop unwritten by it.

    The loop is called as ``loop(rows, keys, nonces, indexers, slow)``: ``keys`` the write key
    of each row's subject in row order (``KeyRing.keys_for_rows``: None for a row without one),
    ``nonces`` the statement's nonce source, ``indexers`` its blind indexer of each column of
    ``plan.columns`` (None when not searchable), ``slow(row, key)`` the generic row function
    (the encrypted copy of one row, or its error)."""
    namespace: dict[str, Any] = {
        "MISSING": object(),
        "FAILED": object(),
        "STRB": _STR,
        "Sealed": Sealed,
        "SEAL": Sealed,
        "INDEX": IndexValue if driver is None else driver,
        # header, nonce and sealed bytes joined into one bytearray: one copy, not two
        "JOIN": bytearray().join,
        "DUMPS": dumps,
        "UnicodeEncodeError": UnicodeEncodeError,
    }
    code: list[str] = []
    emit = code.append

    def wrapped(kind: str, expr: str) -> str:  # a ciphertext or index as the loop writes it
        return expr if driver is bytes else f"{kind}({expr})"

    searchable = [i for i, c in enumerate(plan.columns) if c.index_key is not None]
    emit("def loop(rows, keys, nonces, indexers, slow):")
    for i in searchable:
        emit(f" ix{i} = indexers[{i}]")
    emit(" out = []")
    emit(" append = out.append")
    names = [f"{kind}{i}" for kind in "pvx" for i in range(len(plan.columns))]
    emit(f" {' = '.join(names)} = None")
    emit(" try:")
    emit("  for d, key in zip(rows, keys, strict=True):")
    # With the driver's type the values are read from the copy the statement sends (a mapping
    # whose lookups disagree with its items cannot slip one past the loop); marked, from the row
    # (the bind step checks what the copy holds), copied once the row is the loop's.
    src = "d" if driver is None else "o"
    if driver is not None:
        emit("   o = dict(d)")
    # None: a row without a subject, with a NULL one, or a shredded one
    emit("   if key is None:")
    emit("    append(slow(d, None))")
    emit("    continue")
    # checks and encodings, column by column: ``p{i}`` the plaintext to seal, or None (a NULL:
    # its index is NULL too) or MISSING (nothing written: the parameter is left as it is)
    for i, col in enumerate(plan.columns):
        namespace[f"K{i}"] = col.key
        namespace[f"C{i}"] = col
        v, p = f"v{i}", f"p{i}"
        emit("   try:")
        emit(f"    {v} = {src}[K{i}]")
        emit("   except KeyError:")
        emit(f"    {v} = MISSING")
        if col.is_str and col.retention is None:
            namespace[f"MAX{i}"] = col.max_chars
            emit(f"   if type({v}) is str:")
            emit(f"    if len({v}) > MAX{i}:")
            emit("     append(slow(d, key))")
            emit("     continue")
            emit("    try:")
            emit(f"     {p} = STRB + {v}.encode()")
            emit("    except UnicodeEncodeError:")  # handed over outside the handler
            emit(f"     {p} = FAILED")
            emit(f"    if {p} is FAILED:")
            emit("     append(slow(d, key))")
            emit("     continue")
            if col.index_key is not None:  # where the generic function computes it
                emit(f"    x{i} = {wrapped('INDEX', f'ix{i}({v})')}")
            branch = "elif"
        else:
            branch = "if"
        if driver is not None and col.index_key is not None:
            # a blind index given without its column's value: the generic function's
            namespace[f"IK{i}"] = col.index_key
            emit(f"   {branch} {v} is None or ({v} is MISSING and IK{i} not in o):")
            emit(f"    {p} = {v}")
        else:
            emit(f"   {branch} {v} is None or {v} is MISSING:")
            emit(f"    {p} = {v}")
            emit(f"   elif type({v}) is Sealed:")
            if driver is None:  # left as it is, for its bind step
                emit(f"    {p} = MISSING")
            else:  # its bind step's, through the generic function
                emit("    append(slow(d, key))")
                emit("    continue")
        if col.retention is not None or col.index_key is not None:
            # a value of a retention-bound column (its period's key), or a value of a searchable
            # column that is not the common str (its index is NULL): the generic function's
            emit("   else:")
            emit("    append(slow(d, key))")
            emit("    continue")
        else:
            emit("   else:")
            emit(f"    {p} = DUMPS(C{i}, {v})")
    # every check passed: the row's copy, its indexes and its ciphertexts (in the generic
    # function's order: a column's index, then its value)
    if driver is None:
        emit("   o = dict(d)")
    emit("   h = key.header")
    emit("   seal = key.aead.seal")
    emit("   ads_get = key.ads.get")
    for i, col in enumerate(plan.columns):
        p = f"p{i}"
        if col.index_key is not None:
            namespace[f"IK{i}"] = col.index_key
            emit(f"   if {p} is None:")
            emit(f"    o[IK{i}] = None")
            emit(f"   elif {p} is not MISSING:")
            emit(f"    o[IK{i}] = x{i}")
        else:
            emit(f"   if {p} is not None and {p} is not MISSING:")
        namespace[f"CTX{i}"] = col.ctx_lp
        emit("    n = nonces()")
        emit(f"    ad = ads_get(CTX{i}) or key.associated_data(CTX{i})")
        if driver is bytearray:
            emit(f"    o[K{i}] = JOIN((h, n, seal(n, {p}, ad)))")
        else:
            emit(f"    o[K{i}] = {wrapped('SEAL', f'h + n + seal(n, {p}, ad)')}")
    emit("   append(o)")
    emit(" except BaseException:")
    # no plaintext this loop encoded stays in its frame (a traceback keeps it)
    emit(f"  {' = '.join(names)} = o = None")  # and the copy of the row being written
    emit("  raise")
    emit(" return out")
    exec(compile("\n".join(code), "<ccvault write loop>", "exec"), namespace)  # noqa: S102
    loop: WriteLoop = namespace["loop"]
    return loop
