"""The `callvault` command line (entry point ``callvault.cli:main``; also
``python -m callvault.cli``).

Owns the parser and one module per group of verbs:

- ``main``: the parser, ``main()``, which verb runs where, errors as one line;
- ``vault``: the vault verbs (import, ls, info, export, play, verify, bundle,
  verify-bundle, checkpoint, erase, reindex, rotate-key), written once over a
  ``backend``: ``local`` (an embedded Vault, ``--data``) or ``remote`` (a server
  through the SDK, ``--server``; also the Ingest streaming of `import`);
- ``media``: transcode, sample, demo;
- ``sidecar``: the `sidecar` daemon and `call start` / `call stop`;
- ``common``: the printers and argument helpers the others share.

The top of the import direction: cli may import everything below it (server,
sidecar, vault, store, integrity, media, the extensions, the base modules errors,
durable, ids) and the SDK (callvault_client); nothing in callvault imports cli.
Within cli, imports point from main to the verb modules to backend/common, never
back. Heavy modules (grpc, the vault, the media pipeline) are imported inside the
verbs that need them, so `callvault --help` stays quick.
"""

from callvault.cli.main import build_parser, main
from callvault.cli.media import transcode

__all__ = ["build_parser", "main", "transcode"]
