"""Integrity: per-call hash chains, the Merkle log, checkpoints, proofs."""
