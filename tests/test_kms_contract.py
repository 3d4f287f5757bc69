"""The KMS backend contract (ccvault.testing.KmsContract) on each backend; the fault wrapper."""

from __future__ import annotations

from ccvault.kms import Kms, LocalKms
from ccvault.testing import FaultyKms, FrozenClock, KmsContract


class TestLocalKms(KmsContract):
    def make_kms(self) -> Kms:
        return LocalKms.ephemeral()


class TestFaultyKmsWithoutFaults(KmsContract):
    def make_kms(self) -> Kms:
        return FaultyKms(LocalKms.ephemeral(), clock=FrozenClock())
