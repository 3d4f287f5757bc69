"""Several KMS wrapping one epoch key: disaster recovery and migration between KMS.

``MultiKms(primary, *others)`` wraps every new epoch key under each member (all must succeed: an
epoch is never created with a wrap missing). Unwrapping asks every member that holds a wrap of
the epoch; it succeeds while any one of them answers, and it is refused when

* the epoch carries no wrap of the primary (an epoch inserted with only a secondary's wrap is
  never trusted: the secondary may be easier for an attacker to wrap under), or
* a member that holds a wrap *refuses* it (root unknown, disabled, pending deletion, access
  denied, wrap that does not authenticate): only an *outage* (KmsUnavailableError) lets the other
  members decide, so disabling the primary's root stops every process, and a forged primary wrap
  naming some other root does not hand the decision to the DR KMS, or
* the members that answer do not all unwrap to the same key, or one of them fails the epoch's key
  commitment.

Migrating from KMS A to B: run with ``MultiKms(A, B)``, call :meth:`Vault.add_kms_wraps`
(admin: wraps every live epoch under B too), switch to ``MultiKms(B, A)``, and drop A once B
alone is trusted. See docs/kms.md.

The module also holds the two functions the vault uses for epoch keys, so the same code path
serves a single KMS and a MultiKms.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Protocol, runtime_checkable

from .._repr import safe_repr
from .._secret import SecretKey
from ..errors import ConfigurationError, DecryptionError, KmsError, KmsUnavailableError
from ._protocol import Kms, RootState, WrappedKey

__all__ = ["EpochKeyring", "MultiKms", "kms_by_id", "unwrap_epoch_key", "wrap_epoch_key"]


@runtime_checkable
class EpochKeyring(Protocol):
    """A KMS that stores one wrap per backend: MultiKms, and wrappers around any KMS (the
    testing wrappers implement it so that a wrapped MultiKms keeps all of its wraps)."""

    def wrap_all(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> list[WrappedKey]: ...

    def unwrap_agreeing(
        self,
        wraps: Sequence[WrappedKey],
        *,
        context: Mapping[str, str],
        verify: Callable[[SecretKey], bool],
    ) -> SecretKey: ...

    def backends(self) -> dict[str, Kms]: ...


# Most alive first: a composite root is as alive as its most alive member.
_ALIVENESS = (
    RootState.ENABLED,
    RootState.DISABLED,
    RootState.PENDING_DELETION,
    RootState.DESTROYED,
    RootState.UNKNOWN,
)


class MultiKms:
    """An epoch key wrapped under every member; the first member is the primary."""

    def __init__(self, primary: Kms, *others: Kms) -> None:
        members = (primary, *others)
        if not others:
            raise ConfigurationError("MultiKms needs at least two KMS backends")
        if not all(isinstance(m, Kms) for m in members):
            raise ConfigurationError("every MultiKms member must implement ccvault.kms.Kms")
        ids = [m.kms_id for m in members]
        if len(set(ids)) != len(ids):
            raise ConfigurationError("the same KMS appears twice in MultiKms")
        self.members: tuple[Kms, ...] = members
        self._by_id = dict(zip(ids, members, strict=True))

    @safe_repr
    def __repr__(self) -> str:
        return f"MultiKms({', '.join(repr(m) for m in self.members)})"

    @property
    def primary(self) -> Kms:
        return self.members[0]

    # -- the Kms protocol (one wrap: the primary's) ---------------------------------------------

    @property
    def kms_id(self) -> str:
        return "multi[" + ",".join(m.kms_id for m in self.members) + "]"

    @property
    def supports_root_lifecycle(self) -> bool:
        return all(m.supports_root_lifecycle for m in self.members)

    @property
    def root_destruction_delay(self) -> timedelta:
        """The longest of the members': an epoch is gone only once every wrap of it is."""
        return max(m.root_destruction_delay for m in self.members)

    def wrap(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> WrappedKey:
        roots = self._split(root_id)
        return self.primary.wrap(key, context=context, root_id=roots.get(self.primary.kms_id))

    def unwrap(self, wrapped: WrappedKey, *, context: Mapping[str, str]) -> SecretKey:
        member = self._by_id.get(wrapped.kms_id)
        if member is None:
            raise KmsError("the wrapped key belongs to no member of this MultiKms")
        return member.unwrap(wrapped, context=context)

    def current_root(self) -> str:
        return self._join({m.kms_id: m.current_root() for m in self.members})

    def new_root(self) -> str:
        return self._join({m.kms_id: m.new_root() for m in self.members})

    def destroy_root(self, root_id: str) -> None:
        for kms_id, root in self._split(root_id).items():
            self._by_id[kms_id].destroy_root(root)

    def root_state(self, root_id: str) -> RootState:
        try:
            roots = self._split(root_id)
        except ConfigurationError:
            return RootState.UNKNOWN
        states = [self._by_id[k].root_state(r) for k, r in roots.items()]
        return min(states, key=_ALIVENESS.index, default=RootState.UNKNOWN)

    # -- every member ----------------------------------------------------------------------------

    def wrap_all(
        self, key: SecretKey, *, context: Mapping[str, str], root_id: str | None = None
    ) -> list[WrappedKey]:
        """One wrap per member; any member failing fails the whole (never a partial epoch)."""
        roots = self._split(root_id)
        return [m.wrap(key, context=context, root_id=roots.get(m.kms_id)) for m in self.members]

    def unwrap_agreeing(
        self,
        wraps: Sequence[WrappedKey],
        *,
        context: Mapping[str, str],
        verify: Callable[[SecretKey], bool],
    ) -> SecretKey:
        """The key every reachable member agrees on (see the module docstring for the rules)."""
        by_kms = {w.kms_id: w for w in wraps}
        if not set(by_kms) & set(self._by_id):
            raise KmsError(_no_wrap_message(self.kms_id, wraps))
        if self.primary.kms_id not in by_kms:
            raise DecryptionError(
                f"the epoch carries no wrap of the primary KMS {self.primary.kms_id!r} (the key "
                f"store's wraps: {_ids(wraps)}), and a secondary never vouches for an epoch "
                "alone. A KMS made primary before `ccvault add-kms-wraps` ran with it listed "
                "second reads so: list it second, run add-kms-wraps, then make it primary"
            )
        agreed: SecretKey | None = None
        unavailable: KmsUnavailableError | None = None
        for member in self.members:
            wrapped = by_kms.get(member.kms_id)
            if wrapped is None:
                continue  # a secondary added after this epoch: add_kms_wraps() fills it in
            try:
                key = member.unwrap(wrapped, context=context)
            except KmsUnavailableError as exc:  # only an outage lets the others decide
                unavailable = unavailable or exc
                continue
            # Any refusal (root disabled, pending deletion, unknown, access denied) or integrity
            # failure propagates: a primary root an admin disabled is a kill switch, and a wrap
            # naming a root this KMS refuses must not let another member vouch for the epoch.
            if not verify(key) or (
                agreed is not None and not hmac.compare_digest(agreed.reveal(), key.reveal())
            ):
                del key, agreed  # no unwrapped key in the frame the error's traceback keeps
                raise DecryptionError
            agreed = key
        if agreed is None:
            raise unavailable or KmsUnavailableError("no member of the MultiKms could unwrap")
        return agreed

    def backends(self) -> dict[str, Kms]:
        """The members by their ``kms_id``."""
        return dict(self._by_id)

    # -- composite root ids ----------------------------------------------------------------------

    def _join(self, roots: Mapping[str, str]) -> str:
        return json.dumps(dict(roots), sort_keys=True, separators=(",", ":"))

    def _split(self, root_id: str | None) -> dict[str, str]:
        if root_id is None:
            return {}
        try:
            roots = json.loads(root_id)
        except ValueError:
            roots = None
        if not isinstance(roots, dict) or not set(roots) <= set(self._by_id):
            raise ConfigurationError("not a root id of this MultiKms")
        return {str(k): str(v) for k, v in roots.items()}


def wrap_epoch_key(
    kms: Kms, key: SecretKey, *, context: Mapping[str, str], root_id: str | None
) -> list[WrappedKey]:
    """The wraps to store for a new epoch key: one per KMS."""
    if isinstance(kms, EpochKeyring):
        return kms.wrap_all(key, context=context, root_id=root_id)
    return [kms.wrap(key, context=context, root_id=root_id)]


def unwrap_epoch_key(
    kms: Kms,
    wraps: Sequence[WrappedKey],
    *,
    context: Mapping[str, str],
    verify: Callable[[SecretKey], bool],
) -> SecretKey:
    """Unwrap an epoch key from its stored wraps; ``verify`` checks the key commitment."""
    if isinstance(kms, EpochKeyring):
        return kms.unwrap_agreeing(wraps, context=context, verify=verify)
    mine = [w for w in wraps if w.kms_id == kms.kms_id]
    if not mine:
        raise KmsError(_no_wrap_message(kms.kms_id, wraps))
    key = kms.unwrap(mine[0], context=context)
    if verify(key):
        return key
    del key  # no unwrapped key in the frame the error's traceback keeps
    raise DecryptionError


def _no_wrap_message(configured: str, wraps: Sequence[WrappedKey]) -> str:
    """Why an epoch cannot be unwrapped by the configured KMS, and how to migrate to it."""
    return (
        f"no wrap of this epoch belongs to the configured KMS {configured!r}; the key store's "
        f"wraps are from {_ids(wraps)}. Wrong KMS URL? If you are moving to this KMS, configure "
        "the old one first and this one second (CCVAULT_KMS_URL=<old>,<new>), run "
        "`ccvault add-kms-wraps`, then make the new one primary (docs/kms.md, MultiKms)"
    )


def _ids(wraps: Sequence[WrappedKey]) -> str:
    return ", ".join(repr(k) for k in sorted({w.kms_id for w in wraps})) or "no KMS at all"


def kms_by_id(kms: Kms) -> dict[str, Kms]:
    """The backends behind ``kms`` by their ``kms_id``: the members of a MultiKms, or itself."""
    if isinstance(kms, EpochKeyring):
        return kms.backends()
    return {kms.kms_id: kms}
