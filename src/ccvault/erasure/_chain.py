"""Owns the judgement of journal entries: one entry (format, signature, installation, record) and
a whole ledger (chain, order, gaps, truncation) as a :class:`LedgerReport`. Must not write.

An entry is genuine when it parses as a ``ccvault-journal-entry/v1``, names this installation, and
its signature and its record's signature verify with the installation's pinned receipt key.
Across entries: seqs run 0, 1, 2… with no gap, each ``prev_hash`` is the SHA-256 of the entry
before, the sink keeps them in that order, and nothing the ledger is known to have held is gone
from its end.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import LedgerIntegrityError
from ._ledger import StoredEntry, TornWrite
from ._records import GENESIS_FORMAT, ZERO_HASH, JournalEntry, parse_record

__all__ = ["Fault", "LedgerProblem", "LedgerReport", "analyse", "judge"]

ProblemKind = Literal["tampered", "torn", "truncated", "reordered", "missing", "foreign"]


class LedgerProblem(BaseModel):
    """One thing wrong with a ledger, by sequence number: ``seq`` to ``last_seq`` (the same for
    one entry; None when no seq can be given); ``where`` is the place in the sink."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: ProblemKind
    seq: int | None
    last_seq: int | None
    where: str
    detail: str
    repaired: bool = False

    def __str__(self) -> str:
        if self.seq is None:
            seqs = "seq ?"
        elif self.last_seq is None or self.last_seq == self.seq:
            seqs = f"seq {self.seq}"
        else:
            seqs = f"seqs {self.seq}-{self.last_seq}"
        return f"{self.kind} {seqs} ({self.where}): {self.detail}"


class LedgerReport(BaseModel):
    """What ``Journal.verify()`` found. ``ok`` when every problem is a torn write that was
    repaired (a crash mid-write, never acknowledged: not tampering)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    installation_id: str
    location: str
    head_seq: int | None
    entries: int
    problems: tuple[LedgerProblem, ...]

    @property
    def ok(self) -> bool:
        return all(p.kind == "torn" and p.repaired for p in self.problems)

    def seqs(self, kind: ProblemKind) -> list[int]:
        """Every seq named by problems of ``kind``."""
        found: list[int] = []
        for p in self.problems:
            if p.kind == kind and p.seq is not None:
                found.extend(range(p.seq, (p.last_seq if p.last_seq is not None else p.seq) + 1))
        return found

    def raise_for_problems(self) -> None:
        if not self.ok:
            raise integrity_error(self.location, self.problems)


def integrity_error(location: str, problems: Sequence[LedgerProblem]) -> LedgerIntegrityError:
    shown = "; ".join(str(p) for p in problems[:5])
    more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
    seqs = [p.seq for p in problems if p.seq is not None]
    return LedgerIntegrityError(
        f"the ledger at {location} failed verification: {shown}{more}",
        problems=problems,
        seq=min(seqs) if seqs else None,
    )


class Fault(Exception):
    """Why one entry is not genuine: ``kind`` (tampered or foreign) and a detail (no content)."""

    def __init__(self, kind: ProblemKind, detail: str, claimed: int | None = None) -> None:
        super().__init__(detail)
        self.kind: ProblemKind = kind
        self.detail = detail
        self.claimed = claimed


def judge(item: StoredEntry, installation_id: str, public_key: bytes) -> JournalEntry:
    """The entry ``item`` holds, checked on its own; raises :class:`Fault`."""
    if item.data is None:
        raise Fault("missing", "the sink records it but no longer holds it", item.seq)
    try:
        entry = JournalEntry.model_validate_json(item.data)
    except ValidationError:
        raise Fault("tampered", "it does not parse as a journal entry", item.seq) from None
    if entry.installation_id != installation_id:
        if entry.verify(entry.signing_key):
            raise Fault("foreign", f"it belongs to installation {entry.installation_id}", entry.seq)
        raise Fault("tampered", "its signature does not verify", entry.seq)
    if not entry.verify(public_key):
        raise Fault(
            "tampered", "its signature does not verify with the installation's key", entry.seq
        )
    named = entry.record.get("installation_id")
    if named is not None and named != installation_id:
        raise Fault("foreign", f"its record belongs to installation {named}", entry.seq)
    try:
        record = parse_record(entry.kind, entry.record)
    except (ValueError, ValidationError):
        raise Fault("tampered", "its record does not parse as its kind", entry.seq) from None
    if record is not None and not record.verify(public_key):
        raise Fault("tampered", "its record's signature does not verify", entry.seq)
    if (entry.seq == 0) != (entry.kind == GENESIS_FORMAT) or (
        entry.seq == 0 and entry.prev_hash != ZERO_HASH
    ):
        raise Fault("tampered", "only seq 0 is the genesis entry, chained to zeros", entry.seq)
    return entry


@dataclass(frozen=True)
class _Seen:
    index: int
    stored: int | None
    digest: str
    prev_hash: str
    where: str


def analyse(
    items: Iterable[StoredEntry],
    *,
    installation_id: str,
    public_key: bytes,
    location: str,
    floor: int,
    torn: Sequence[TornWrite] = (),
) -> LedgerReport:
    """Judge every entry the sink holds. ``floor`` is the highest seq the ledger is known to
    have held (the journal's own, the sink's recorded head, the caller's): anything below it
    that is gone from the end is *truncated*; a hole inside is *missing*."""
    problems: list[LedgerProblem] = []
    valid: dict[int, _Seen] = {}
    accounted: set[int] = set()
    stored: set[int] = set()
    last_claim = -1
    for index, item in enumerate(items):
        if item.seq is not None:
            stored.add(item.seq)
        try:
            entry = judge(item, installation_id, public_key)
        except Fault as fault:
            # Where the sink keeps no index (JSONL), the place after the last genuine entry:
            # what a line that fails verification says about its own seq is not to be trusted.
            seq = item.seq if item.seq is not None else last_claim + 1
            problems.append(
                LedgerProblem(
                    kind=fault.kind, seq=seq, last_seq=seq, where=item.where, detail=fault.detail
                )
            )
            accounted.add(seq)
            last_claim = seq
            continue
        last_claim = entry.seq
        if entry.seq in valid:
            problems.append(_one("tampered", entry.seq, item.where, "a second copy of this entry"))
            continue
        valid[entry.seq] = _Seen(index, item.seq, entry.digest(), entry.prev_hash, item.where)
    problems += _placement(valid, stored)
    for seq, seen in valid.items():
        before = valid.get(seq - 1)
        if seq > 0 and before is not None and seen.prev_hash != before.digest:
            problems.append(
                _one("tampered", seq, seen.where, f"its prev_hash is not the hash of seq {seq - 1}")
            )
    top = max([*valid, *accounted], default=-1)
    holes = [s for s in range(top + 1) if s not in valid and s not in accounted]
    problems += [
        LedgerProblem(
            kind="missing", seq=lo, last_seq=hi, where=location, detail="deleted from the ledger"
        )
        for lo, hi in _ranges(holes)
    ]
    if floor > top:
        problems.append(
            LedgerProblem(
                kind="truncated",
                seq=top + 1,
                last_seq=floor,
                where=location,
                detail=f"the ledger is known to have held seq {floor}: its end was cut off",
            )
        )
    for t in torn:
        after = None if t.after_seq is None else t.after_seq + 1
        state = "repaired: cut back to the last complete line" if t.repaired else "not repaired"
        problems.append(
            LedgerProblem(
                kind="torn",
                seq=after,
                last_seq=after,
                where=t.where,
                detail=f"an incomplete last write of {t.length} bytes (a crash mid-write), {state}",
                repaired=t.repaired,
            )
        )
    problems.sort(key=lambda p: (-1 if p.seq is None else p.seq, p.kind))
    return LedgerReport(
        installation_id=installation_id,
        location=location,
        head_seq=max(valid, default=None),
        entries=len(valid),
        problems=tuple(problems),
    )


def _placement(valid: dict[int, _Seen], stored: set[int]) -> list[LedgerProblem]:
    """Entries out of place: by the sink's own index where it keeps one, else by order."""
    found: list[LedgerProblem] = []
    if any(seen.stored is not None for seen in valid.values()):
        for seq, seen in sorted(valid.items()):
            if seen.stored is None or seen.stored == seq:
                continue
            if seq in stored:  # its own place holds another entry: a swap
                found.append(_one("reordered", seq, seen.where, f"stored as seq {seen.stored}"))
            else:
                found.append(
                    _one(
                        "tampered",
                        seq,
                        seen.where,
                        f"stored as seq {seen.stored}: its seq was changed",
                    )
                )
        return found
    flagged: set[int] = set()
    highest = -1
    for seq, _ in sorted(valid.items(), key=lambda kv: kv[1].index):
        if seq < highest:
            for s, detail in (
                (seq, f"stored after seq {highest}"),
                (highest, f"stored before seq {seq}"),
            ):
                if s not in flagged:
                    flagged.add(s)
                    found.append(_one("reordered", s, valid[s].where, detail))
        highest = max(highest, seq)
    return found


def _one(kind: ProblemKind, seq: int, where: str, detail: str) -> LedgerProblem:
    return LedgerProblem(kind=kind, seq=seq, last_seq=seq, where=where, detail=detail)


def _ranges(seqs: list[int]) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    for s in seqs:
        if ranges and ranges[-1][1] == s - 1:
            ranges[-1] = (ranges[-1][0], s)
        else:
            ranges.append((s, s))
    return ranges
