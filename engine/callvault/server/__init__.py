"""The gRPC face of the engine: servicers that translate proto <-> Vault, the
interceptor chain (identity, method log) and the server (`callvault serve`)."""
