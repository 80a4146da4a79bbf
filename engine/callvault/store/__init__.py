"""The vault's storage: segment files, encryption at rest, the RocksDB index."""
