"""The Lifecycle service (issue 12; docs/policy.md, proto/callvault/v1 "Lifecycle").

One servicer made of one part per concern, each in its own module (lc_*.py: tags,
policy, holds, disposal, erasure by subject, archive). A method no part implements
answers UNIMPLEMENTED (the generated base class). The parts share ``LifecycleBase``:
the vault, the settings, the running server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from callvault_client._pb import callvault_pb2_grpc as pbg

from callvault.server.lc_archive import ArchivePart
from callvault.server.lc_disposal import DisposalPart
from callvault.server.lc_holds import HoldsPart
from callvault.server.lc_policy import PolicyPart
from callvault.server.lc_subject import SubjectPart
from callvault.server.lc_tags import TagsPart
from callvault.vault import Vault

if TYPE_CHECKING:
    from callvault.server.servicers import Config


class LifecycleBase:
    def __init__(self, vault: Vault, config: Config, server: Any = None) -> None:
        self.vault = vault
        self.config = config
        self.server = server  # the app.Server (its scheduler, ingestor, audit trail)


class LifecycleServicer(  # the parts go first
    TagsPart,
    PolicyPart,
    HoldsPart,
    DisposalPart,
    SubjectPart,
    ArchivePart,
    LifecycleBase,
    pbg.LifecycleServicer,
):
    """Lifecycle: the parts (lc_*.py mixins) come before the generated base."""
