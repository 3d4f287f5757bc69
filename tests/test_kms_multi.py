"""MultiKms: an epoch key wrapped under several KMS (disaster recovery, migration)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from ccvault import (
    ConfigurationError,
    DecryptionError,
    KmsError,
    KmsKeyNotFoundError,
    KmsUnavailableError,
    Vault,
)
from ccvault._secret import SecretKey
from ccvault.crypto._primitives import random_bytes
from ccvault.crypto._wrap import commitment
from ccvault.keystore._sql import SqlKeyStore
from ccvault.kms import Kms, LocalKms, MultiKms, RetryPolicy, WrappedKey
from ccvault.testing import CountingKms, FaultyKms, FrozenClock, KmsContract

CTX = "customers.phone"


class TestMultiKmsContract(KmsContract):
    def make_kms(self) -> Kms:
        return MultiKms(LocalKms.ephemeral(), LocalKms.ephemeral())


def _faulty(kms: Kms) -> FaultyKms:
    return FaultyKms(kms, clock=FrozenClock())


def test_needs_two_distinct_members() -> None:
    a = LocalKms.ephemeral()
    with pytest.raises(ConfigurationError):
        MultiKms(a)
    with pytest.raises(ConfigurationError):
        MultiKms(a, a)
    with pytest.raises(ConfigurationError):
        MultiKms(a, object())  # type: ignore[arg-type]


def test_every_epoch_is_wrapped_by_every_member(sqlite_url: str) -> None:
    primary, dr = LocalKms.ephemeral(), LocalKms.ephemeral()
    subject = uuid.uuid4()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        blob = vault.encrypt(subject, b"+44 20 7946 0000", context=CTX)
        vault.rotate_epoch()
        newer = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
    store = SqlKeyStore(sqlite_url)
    try:
        for epoch in store.epochs():
            assert {w.kms_id for w in epoch.wraps} == {primary.kms_id, dr.kms_id}
    finally:
        store.close()
    # Either member alone opens everything: the DR KMS during an outage of the primary.
    for alone in (primary, dr):
        with Vault(alone, sqlite_url) as vault:
            assert vault.decrypt(blob, context=CTX, subject=subject) == b"+44 20 7946 0000"
            assert vault.decrypt(newer, context=CTX) == b"x"


def test_unwrap_succeeds_with_any_one_member_reachable(sqlite_url: str) -> None:
    primary, dr = _faulty(LocalKms.ephemeral()), _faulty(LocalKms.ephemeral())
    subject = uuid.uuid4()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        blob = vault.encrypt(subject, b"hello", context=CTX)
    primary.outage()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        assert vault.decrypt(blob, context=CTX) == b"hello"
    primary.heal()
    dr.outage()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        assert vault.decrypt(blob, context=CTX) == b"hello"
    primary.outage()
    with pytest.raises(KmsUnavailableError):
        Vault(MultiKms(primary, dr), sqlite_url)


def _insert_epoch(
    url: str,
    vault: Vault,
    wraps_by: list[tuple[Kms, bytes]],
    committed: bytes,
    extra: Sequence[WrappedKey] = (),
) -> None:
    """Write an epoch into the key store as an attacker with database access and Encrypt
    permission on some KMS would: each KMS wraps a key of the attacker's choice (``extra``:
    forged wraps stored as they are)."""
    store = SqlKeyStore(url)
    try:
        seq = max(e.seq for e in store.epochs()) + 1
        epoch_id = random_bytes(16)
        context = vault._epochs.context(epoch_id)
        wraps = [*extra, *(kms.wrap(SecretKey(key), context=context) for kms, key in wraps_by)]
        store.add_epoch(epoch_id, seq, commitment(committed, "epoch", epoch_id, 0), wraps, 0.0)
    finally:
        store.close()


def test_epoch_wrapped_only_by_the_dr_kms_is_refused(sqlite_url: str) -> None:
    primary, dr = LocalKms.ephemeral(), LocalKms.ephemeral()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        old = vault.encrypt(uuid.uuid4(), b"before", context=CTX)
        forged = random_bytes(32)
        _insert_epoch(sqlite_url, vault, [(dr, forged)], forged)
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        assert vault.decrypt(old, context=CTX) == b"before"  # older epochs still open
        with pytest.raises(DecryptionError):
            vault.encrypt(uuid.uuid4(), b"would be readable with the forged key", context=CTX)


@pytest.mark.parametrize("committed_to", ["primary", "dr"])
def test_members_that_disagree_are_refused(sqlite_url: str, committed_to: str) -> None:
    primary, dr = LocalKms.ephemeral(), LocalKms.ephemeral()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        k1, k2 = random_bytes(32), random_bytes(32)
        _insert_epoch(
            sqlite_url, vault, [(primary, k1), (dr, k2)], k1 if committed_to == "primary" else k2
        )
    with Vault(MultiKms(primary, dr), sqlite_url) as vault, pytest.raises(DecryptionError):
        vault.encrypt(uuid.uuid4(), b"x", context=CTX)


def test_add_kms_wraps_migrates_to_a_new_kms(sqlite_url: str) -> None:
    old, new = LocalKms.ephemeral(), LocalKms.ephemeral()
    subject = uuid.uuid4()
    with Vault(old, sqlite_url) as vault:
        blob = vault.encrypt(subject, b"keep me", context=CTX)
        vault.rotate_epoch()
        with pytest.raises(ConfigurationError):
            vault.add_kms_wraps()
    with Vault(MultiKms(old, new), sqlite_url) as vault:
        assert vault.add_kms_wraps() == 2  # two epochs, one new wrap each
        assert vault.add_kms_wraps() == 0  # idempotent
    with Vault(MultiKms(new, old), sqlite_url) as vault:  # the new KMS is primary now
        assert vault.decrypt(blob, context=CTX, subject=subject) == b"keep me"
    with Vault(new, sqlite_url) as vault:  # and finally alone
        assert vault.decrypt(blob, context=CTX, subject=subject) == b"keep me"


def test_a_new_primary_without_wraps_is_refused_until_migrated(sqlite_url: str) -> None:
    old, new = LocalKms.ephemeral(), LocalKms.ephemeral()
    with Vault(old, sqlite_url) as vault:
        vault.encrypt(uuid.uuid4(), b"x", context=CTX)
    with pytest.raises((DecryptionError, KmsError)):
        Vault(MultiKms(new, old), sqlite_url)


def test_epoch_creation_needs_every_member(sqlite_url: str) -> None:
    primary, dr = LocalKms.ephemeral(), _faulty(LocalKms.ephemeral())
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        dr.outage()
        with pytest.raises(KmsUnavailableError):
            vault.rotate_epoch()
        assert vault.active_epoch_seq() == 1


def test_per_epoch_roots_on_every_member(sqlite_url: str) -> None:
    primary, dr = LocalKms.ephemeral(), LocalKms.ephemeral()
    multi = MultiKms(primary, dr)
    with Vault(multi, sqlite_url, per_epoch_roots=True) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        vault.rotate_epoch()
        assert vault.decrypt(blob, context=CTX) == b"x"
    assert len(primary._roots) == 3
    assert len(dr._roots) == 3


# -- over the real servers: AWS KMS (moto) primary, OpenBao Transit for disaster recovery ------


def _aws(moto_server: Any) -> Kms:
    from ccvault.kms import AwsKms

    client = moto_server.client(max_attempts=2, connect_timeout=1, read_timeout=2)
    return AwsKms(moto_server.create_key(client), client=client, max_attempts=2)


def _openbao(bao: Any) -> Kms:
    from ccvault.kms import VaultTransitKms

    kms = VaultTransitKms(
        bao.addr,
        f"dr-{uuid.uuid4().hex[:12]}",
        token=bao.root_token,
        allow_insecure_http=True,
        policy=RetryPolicy(2, 0.0, 0.0),
    )
    kms.ensure_key()
    return kms


class TestMultiKmsOverRealServers(KmsContract):
    @pytest.fixture(autouse=True)
    def _servers(self, moto_server: Any, bao: Any) -> None:
        self.moto, self.bao = moto_server, bao

    def make_kms(self) -> Kms:
        return MultiKms(_aws(self.moto), _openbao(self.bao))


def test_dr_kms_serves_while_the_primary_is_down(
    moto_server: Any, bao: Any, sqlite_url: str
) -> None:
    primary, dr = _aws(moto_server), _openbao(bao)
    subject = uuid.uuid4()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        blob = vault.encrypt(subject, b"+1 555 0100", context=CTX)
    moto_server.faults.clear()
    moto_server.faults.fail("Decrypt", "ServiceUnavailableException", times=10, status=503)
    try:
        with Vault(MultiKms(primary, dr), sqlite_url) as vault:  # a fresh process, AWS down
            assert vault.decrypt(blob, context=CTX, subject=subject) == b"+1 555 0100"
    finally:
        moto_server.faults.clear()
    bao.seal()
    try:
        with Vault(MultiKms(primary, dr), sqlite_url) as vault:  # OpenBao sealed, AWS back
            assert vault.decrypt(blob, context=CTX, subject=subject) == b"+1 555 0100"
        moto_server.faults.fail("Decrypt", "ServiceUnavailableException", times=10, status=503)
        with pytest.raises(KmsUnavailableError):  # both down: fail closed
            Vault(MultiKms(primary, dr), sqlite_url)
    finally:
        moto_server.faults.clear()
        bao.unseal()


def test_forged_dr_only_epoch_is_refused_over_real_servers(
    moto_server: Any, bao: Any, sqlite_url: str
) -> None:
    primary, dr = _aws(moto_server), _openbao(bao)
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        forged = random_bytes(32)
        _insert_epoch(sqlite_url, vault, [(dr, forged)], forged)
    with Vault(MultiKms(primary, dr), sqlite_url) as vault, pytest.raises(DecryptionError):
        vault.encrypt(uuid.uuid4(), b"x", context=CTX)


def test_a_refusing_primary_is_never_outvoted_by_the_dr_kms(sqlite_url: str) -> None:
    """A forged primary wrap that names a root the primary refuses (unknown, disabled...) must
    not hand the decision to the DR KMS: only an outage lets the other members decide."""
    primary, dr = LocalKms.ephemeral(), LocalKms.ephemeral()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        forged = random_bytes(32)
        never_had = WrappedKey(primary.kms_id, "00" * 16, random_bytes(60))  # an unknown root
        _insert_epoch(sqlite_url, vault, [(dr, forged)], forged, extra=[never_had])
    with Vault(MultiKms(primary, dr), sqlite_url) as vault, pytest.raises(KmsKeyNotFoundError):
        vault.encrypt(uuid.uuid4(), b"x", context=CTX)


def test_disabling_the_primary_root_stops_every_process(sqlite_url: str) -> None:
    primary, dr = LocalKms.ephemeral(), LocalKms.ephemeral()
    with Vault(MultiKms(primary, dr), sqlite_url) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
    primary.destroy_root(primary.current_root())  # the admin's kill switch
    with pytest.raises(KmsKeyNotFoundError):
        Vault(MultiKms(primary, dr), sqlite_url).decrypt(blob, context=CTX)


def test_add_kms_wraps_gives_each_epoch_its_own_root_on_the_new_kms(sqlite_url: str) -> None:
    old, new = LocalKms.ephemeral(), LocalKms.ephemeral()
    with Vault(old, sqlite_url, per_epoch_roots=True) as vault:
        vault.rotate_epoch()
    with Vault(MultiKms(old, new), sqlite_url, per_epoch_roots=True) as vault:
        assert vault.add_kms_wraps() == 2
        roots = [dict(e.roots)[new.kms_id] for e in vault.epochs()]
    assert len(set(roots)) == 2  # never one shared root: each epoch stays destroyable


@pytest.mark.parametrize("wrapper", [CountingKms, _faulty])
def test_a_wrapped_multikms_keeps_every_wrap(sqlite_url: str, wrapper: Any) -> None:
    primary, dr = LocalKms.ephemeral(), LocalKms.ephemeral()
    with Vault(wrapper(MultiKms(primary, dr)), sqlite_url) as vault:
        blob = vault.encrypt(uuid.uuid4(), b"x", context=CTX)
        assert {k for e in vault.epochs() for k, _ in e.roots} == {primary.kms_id, dr.kms_id}
        assert vault.add_kms_wraps() == 0
    with Vault(dr, sqlite_url) as vault:
        assert vault.decrypt(blob, context=CTX) == b"x"
