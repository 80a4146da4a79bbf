"""The gRPC layer of callvault: `callvault serve` (docs/server.md).

Owns:

* ``app``: the server process (settings, TLS, health, reflection, graceful
  shutdown);
* ``servicers``: proto <-> engine for Ingest, Archive, Integrity and Admin, and
  engine errors -> status codes; nothing else;
* ``callinfo``: a call's ``CallInfo`` from the vault's index entry (Search,
  GetCall, and `callvault --data DIR info`; no grpc);
* ``interceptors``: the chain every RPC passes (identity, permission, method log);
* ``ingest``: live recording: ``LiveCall`` (one call being recorded),
  ``Ingestor`` (the server's live calls) and ``RecordStream`` (one Record
  stream's state machine, in the engine's terms);
* ``playback``: Play of a sealed call or one being recorded.

May import: ``callvault.vault`` and what is below it (``store``, ``integrity``,
``media``, the compiled ``callvault._*``), the base modules (``errors``,
``durable``, ``timeline``), and the SDK's generated stubs
``callvault_client._pb`` (the wire types; nothing else of the SDK). Never
``callvault.sidecar`` or ``callvault.cli``, which sit above it, not even lazily
inside a function.
"""
