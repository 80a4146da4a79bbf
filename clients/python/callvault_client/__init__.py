"""callvault_client: the thin SDK of the callvault gRPC service."""
