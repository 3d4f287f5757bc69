"""Field round trips: encrypt + decrypt of one 100-byte value, ccvault beside raw AES-GCM and peers.

All candidates run in the same repeats (order rotated each repeat). ccvault is timed with one warm
subject and cycling over 20,000 warm subjects (keys created and cached by ``vault.warm`` first,
with a cache period longer than the run so nothing expires while it is timed). ccvault's decrypt
is given ``subject=``, checking the owner as an ORM column would.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable

from benchmarks import _peers
from benchmarks._config import CONTEXT, VALUE, Config, Results, missing, put
from benchmarks._measure import Loop, Summary, calibrate, interleaved, ratios
from ccvault import Vault
from ccvault.kms import LocalKms

SUBJECTS_20K = 20_000

# candidate -> (figure for µs per round trip, figure for the ratio to raw AES-GCM)
FIGURES: dict[str, tuple[str, str | None]] = {
    "aesgcm": ("aesgcm_roundtrip_us", None),
    "ccvault": ("field_roundtrip_us", "field_roundtrip_ratio_vs_aesgcm"),
    "ccvault_20k": ("field_roundtrip_us_20k", "field_roundtrip_ratio_vs_aesgcm_20k"),
    "sqlalchemy_utils": (
        "peer_sqlalchemy_utils_roundtrip_us",
        "peer_sqlalchemy_utils_ratio_vs_aesgcm",
    ),
    "tink_aead": ("peer_tink_aead_roundtrip_us", "peer_tink_aead_ratio_vs_aesgcm"),
    "tink_envelope": ("peer_tink_envelope_roundtrip_us", "peer_tink_envelope_ratio_vs_aesgcm"),
    "esdk": ("peer_esdk_roundtrip_us", "peer_esdk_ratio_vs_aesgcm"),
    "esdk_default": ("peer_esdk_default_roundtrip_us", "peer_esdk_default_ratio_vs_aesgcm"),
}

NOTES = {
    "peer_tink_envelope_roundtrip_us": "KmsEnvelopeAead over tink.testing.fake_kms (an in-process "
    "AES256_GCM keyset as the KMS): no network; a real KMS adds a call per encrypt and decrypt",
    "peer_esdk_roundtrip_us": "RawMasterKeyProvider (AES-256 wrapping key), suite "
    "AES_256_GCM_HKDF_SHA512_COMMIT_KEY, REQUIRE_ENCRYPT_REQUIRE_DECRYPT, new data key per message",
    "peer_esdk_default_roundtrip_us": "RawMasterKeyProvider, default suite "
    "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384 (signed)",
    "aesgcm_roundtrip_us": "cryptography AESGCM, key object reused, os.urandom(12) nonce per "
    "value, no associated data",
}


def _ccvault_loops(cfg: Config) -> tuple[dict[str, Loop], Vault]:
    vault = Vault(LocalKms.ephemeral(), f"sqlite:///{cfg.workdir / 'field.db'}", cache_ttl=86_400)
    one = uuid.uuid4()
    many = [uuid.uuid4() for _ in range(SUBJECTS_20K)]
    vault.warm([one])
    if vault.warm(many) != SUBJECTS_20K:
        raise RuntimeError("vault.warm did not make every subject ready")
    encrypt, decrypt = vault.encrypt, vault.decrypt
    if decrypt(encrypt(one, VALUE, context=CONTEXT), context=CONTEXT, subject=one) != VALUE:
        raise RuntimeError("ccvault round trip did not return the value")

    def single(n: int) -> None:
        for _ in range(n):
            decrypt(encrypt(one, VALUE, context=CONTEXT), context=CONTEXT, subject=one)

    cycle = itertools.cycle(many).__next__

    def cycling(n: int) -> None:
        for _ in range(n):
            s = cycle()
            decrypt(encrypt(s, VALUE, context=CONTEXT), context=CONTEXT, subject=s)

    cycling(SUBJECTS_20K)  # one untimed pass: every read key is cached as well
    return {"ccvault": single, "ccvault_20k": cycling}, vault


def run(cfg: Config) -> Results:
    out: Results = {}
    ad = CONTEXT.encode()
    builders: dict[str, Callable[[], Loop]] = {
        "aesgcm": lambda: _peers.aesgcm(VALUE),
        "sqlalchemy_utils": lambda: _peers.sqlalchemy_utils(VALUE),
        "tink_aead": lambda: _peers.tink_aead(VALUE, ad),
        "tink_envelope": lambda: _peers.tink_envelope(VALUE, ad),
        "esdk": lambda: _peers.esdk(VALUE, CONTEXT, signed=False),
        "esdk_default": lambda: _peers.esdk(VALUE, CONTEXT, signed=True),
    }
    cfg.log(f"field: warming 1 + {SUBJECTS_20K} subjects")
    ccvault_loops, vault = _ccvault_loops(cfg)
    loops: dict[str, Loop] = {}
    for name in FIGURES:
        if name in ccvault_loops:
            loops[name] = ccvault_loops[name]
            continue
        try:
            loops[name] = builders[name]()
        except _peers.Unavailable as exc:
            us_name, ratio_name = FIGURES[name]
            missing(out, us_name, str(exc))
            if ratio_name:
                missing(out, ratio_name, str(exc))
    ops = {name: calibrate(loop, cfg.target_s) for name, loop in loops.items()}
    ops["ccvault_20k"] = max(SUBJECTS_20K, ops["ccvault_20k"])  # whole cycles of 20,000 subjects
    cfg.log(f"field: {cfg.repeats} repeats of {ops}")
    samples = interleaved(loops, ops, cfg.repeats)
    vault.close()

    base = samples["aesgcm"]
    for name, series in samples.items():
        us_name, ratio_name = FIGURES[name]
        put(out, us_name, Summary.of(series).scaled(1e-3))
        if ratio_name:
            put(out, ratio_name, ratios(series, base))
    for name, note in NOTES.items():
        if out.get(name) is not None:
            out[f"{name}_note"] = note
    out["field_repeats"] = cfg.repeats
    out["field_ops_per_repeat"] = ", ".join(f"{k}={v}" for k, v in ops.items())
    out["field_value_bytes"] = len(VALUE)
    out["field_context"] = CONTEXT
    return out
