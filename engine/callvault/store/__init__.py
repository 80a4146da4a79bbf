"""The vault's storage, below any notion of a call's lifecycle: segment files and
their recovery (segment, over the file layer fs), the record bodies stored in
them (records), encryption at rest and the key file (crypto), and the RocksDB
index (index). Layouts: docs/format.md 8.2 (segments), 8.4 (index), 8.5
(record bodies), 8.6 (keys at rest).

May import the base modules only (callvault.errors, callvault.durable,
callvault.timeline); never integrity/, media/, the vault or anything above it.
"""
