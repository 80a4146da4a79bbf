"""Lifecycle.GetPolicy and ApplyPolicy, and the policy in force on a server
(docs/policy.md "Changing the policy").

The policy in force is the one stored in DATA/policy (callvault.lifecycle.policy).
``serve --config``'s ``[policy]`` section is applied at start and on SIGHUP when it
differs from the last section applied from the config; ``ApplyPolicy`` (and `policy
apply` on the data directory) replace it until the config's section changes. Each
change re-attaches the vault, so calls sealed from then on get their retention end
under the new policy.
"""

from __future__ import annotations

import json
import logging
import threading
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from callvault_client._pb import callvault_pb2 as pb

from callvault import ids
from callvault.errors import InputError
from callvault.lifecycle import policy as pol
from callvault.server.ingest import check_writer
from callvault.server.servicers import _platform_only, _who, unary

if TYPE_CHECKING:
    from callvault.server.servicers import Config
    from callvault.vault import Vault

log = logging.getLogger("callvault.server.policy")
_LOCK = threading.Lock()  # one change of the policy at a time (apply, reload)
CONFIG_SECTION = "policy"


def _names_other_tenants(a: pol.Applied, tenant: str) -> bool:
    p = a.policy if a.policy is not None else pol.Policy.load(a.text)
    return any(
        key == "tenant" and any(v != tenant for v in values)
        for rule in p.rules
        for key, values in rule.match
    )


def info_pb(a: pol.Applied | None) -> pb.PolicyInfo:
    if a is None:
        return pb.PolicyInfo()
    return pb.PolicyInfo(
        toml=a.text,
        sha256=a.sha256,
        applied_us=a.applied_us,
        applied_by=a.applied_by,
        source=a.source,
    )


def config_policy(section: object, *, text: str | None = None) -> pol.Policy:
    """The ``[policy]`` section of serve --config as a Policy (its lines when the
    config's ``text`` is given)."""
    where = "--config [policy]"
    if text is not None:
        return pol.Policy.load(text, within=CONFIG_SECTION, where="--config")
    if not isinstance(section, dict):
        raise pol.PolicyError(0, "[policy] must be a table", where=where)
    return pol.Policy.from_doc(section, prefix=(CONFIG_SECTION,), where=where)


def check_config_file(path: str | None) -> None:
    """Refuse (PolicyError naming the line) a --config whose [policy] is bad, before
    the server starts."""
    if not path or path.endswith(".json"):
        return  # JSON: checked by key (Server -> start_policy)
    text = Path(path).read_text()
    if CONFIG_SECTION in tomllib.loads(text):
        config_policy(None, text=text)


class PolicyPart:
    """The Lifecycle servicer's policy methods (mixed in before LifecycleBase)."""

    vault: Vault
    config: Config

    def start_policy(self) -> None:
        """At start: the config's [policy] (when it differs from the last one applied
        from the config), else the stored policy, attached to the vault."""
        section = self.config.policy.get(CONFIG_SECTION)
        with _LOCK:
            if section is None:
                p = pol.attach(self.vault)
                if p is not None:
                    log.info("retention policy %s in force (stored)", p.sha256[:12])
                return
            a = pol.apply_config(self.vault, config_policy(section))
            now = pol.current(self.vault)
            assert now is not None
            if a is not None:
                log.info("retention policy %s applied from --config [policy]", a.sha256[:12])
            else:
                log.info("retention policy %s in force (%s)", now.sha256[:12], now.source)

    def reload_policy(self, path: str | None) -> bool:
        """SIGHUP: read the config's [policy] again; a bad one keeps the policy in
        force and logs an ERROR naming the line. True when the policy changed."""
        if not path:
            log.info("SIGHUP: no --config: the retention policy is unchanged")
            return False
        try:
            text = Path(path).read_text()
            if path.endswith(".json"):
                doc = json.loads(text)
                section = doc.get(CONFIG_SECTION) if isinstance(doc, dict) else None
                p = None if section is None else config_policy(section)
            else:
                has = CONFIG_SECTION in tomllib.loads(text)
                p = config_policy(None, text=text) if has else None
        except (OSError, ValueError, InputError) as e:  # PolicyError is an InputError
            log.error("SIGHUP: %s refused, the retention policy in force stays: %s", path, e)
            return False
        if p is None:
            log.info("SIGHUP: %s has no [policy]: the retention policy is unchanged", path)
            return False
        with _LOCK:
            try:
                a = pol.apply_config(self.vault, p, by="serve --config (SIGHUP)")
            except (OSError, InputError) as e:
                log.error("SIGHUP: the policy could not be stored, the one in force stays: %s", e)
                return False
        if a is None:
            log.info("SIGHUP: [policy] unchanged")
            return False
        log.info("SIGHUP: retention policy %s applied from %s [policy]", a.sha256[:12], path)
        return True

    @unary
    def GetPolicy(self, r: pb.GetPolicyRequest, context: grpc.ServicerContext) -> pb.PolicyInfo:
        a = pol.current(self.vault)
        out = info_pb(a)
        who = _who()
        if a is not None and who.tenant is not None and _names_other_tenants(a, who.tenant):
            # the text names other tenants (rules matching on them): a tenant identity
            # sees that a policy is in force (its hash, when, by whom), not the text
            out.toml = ""
        return out

    @unary
    def ApplyPolicy(self, r: pb.ApplyPolicyRequest, context: grpc.ServicerContext) -> pb.PolicyInfo:
        who = _who()
        _platform_only(who, "applying a policy")
        ids.check_text(r.reason, "reason", ids.MAX_REASON_BYTES)
        if r.shorten_governance and not r.reapply:
            raise InputError("shorten_governance is part of a reapply: set reapply too")
        if r.shorten_governance and not r.reason.strip():
            raise InputError("shortening governance retention needs a reason")
        p = pol.Policy.load(r.toml, where="ApplyPolicyRequest.toml")
        check_writer(self.vault)
        with _LOCK:
            a = pol.store(self.vault, p, by=who.name)
            pol.attach(self.vault, p)
            log.info("retention policy %s applied by %s", p.sha256[:12], who.name)
            out = info_pb(a)
            if r.reapply:
                done = pol.reapply(
                    self.vault,
                    p,
                    by=who.doc(),
                    reason=r.reason,
                    shorten_governance=r.shorten_governance,
                )
                out.reapplied.CopyFrom(pb.PolicyReapplied(**done.doc()))
        return out
