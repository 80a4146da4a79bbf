"""Integrity: per-call hash chains (chain), the Merkle log (merkle, log) and its
leaves (leaves), signed checkpoints (checkpoint), and the offline verifier of an
export bundle (bundle), which needs no vault, no index and no key file.
Layouts: docs/format.md 8.3 (chains), 8.7 (log and leaves), 8.8 (checkpoints),
8.9 (bundle).

May import store/ (record bodies), the media formats (the bundle's Ogg reader:
callvault.media.ogg, the compiled callvault._opus) and the base modules
(errors, durable, timeline); never the vault or anything above it.
"""
