"""The adversarial suite: tampering, fuzzing, races and crash injection (docs/security.md,
"Figures"). Quick by default; ``CCVAULT_TEST_ADVERSARIAL=long`` adds the long versions."""
