"""`callvault policy apply|show|check` and `erase --override-retention` on a data
directory and through a real `callvault serve` with tokens (platform admin applies,
a tenant admin is refused), the config's [policy] at start and on SIGHUP, and time
moved past a retention end with `faketime` (docs/policy.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from callvault_client import Client

from callvault.media import sample
from callvault.vault import Vault
from tests.servers import CLI, run_cli, start_server

POLICY = """\
[retention]
default = "180d"

[[retention.rule]]
name = "vip"
match = { tag = "vip" }
keep = "7y"
mode = "compliance"

[[retention.rule]]
name = "complaint"
match = { tag = "complaint" }
keep = "2y"
mode = "governance"
"""
END = datetime(2026, 1, 31, tzinfo=UTC).timestamp()  # the calls end then (+1 s)


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    tone = (3000 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)).astype(np.int16)
    sample.write_capture(
        p,
        [
            (tone, sample.LegPlan(ssrc=1, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000))),
            (
                tone,
                sample.LegPlan(law=8, ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002)),
            ),
        ],
        t0=END,
    )
    return p


def retention(data: Path, call_id: str, tenant: str = "default") -> dict[str, object] | None:
    with Vault.open(data, read_only=True) as v:
        return v.get_call(call_id, tenant=tenant).retention


def imported(data: Path, capture: Path, call_id: str, *meta: str, via: str = "--data") -> None:
    target = ("--data", str(data)) if via == "--data" else via.split()
    extra = [x for m in meta for x in ("--meta", m)]
    run_cli(*target, "import", "--call-id", call_id, *extra, str(capture))


def test_apply_show_check_on_a_data_directory(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "v"
    f = tmp_path / "p.toml"
    f.write_text(POLICY)
    run_cli("--data", str(data), "init")
    out = run_cli("--data", str(data), "policy", "show").stdout
    assert "no retention policy applied" in out
    imported(data, capture, "before", "tags=vip")
    assert retention(data, "before") is None
    # check: the rules, nothing stored
    out = run_cli("policy", "check", str(f)).stdout
    assert "vip: tag = vip -> keep 7y, compliance" in out
    assert "default: every other call -> keep 180d, default" in out
    assert not (data / "policy").exists()
    applied = run_cli("--data", str(data), "policy", "apply", str(f), "--json").stdout
    sha = json.loads(applied)["sha256"]
    shown = json.loads(run_cli("--data", str(data), "policy", "show", "--json").stdout)
    assert shown["sha256"] == sha and shown["toml"] == POLICY and shown["source"] == "apply"
    assert [r["name"] for r in shown["rules"]] == ["vip", "complaint"]
    # import seals with the retention end of the policy in force
    imported(data, capture, "v1", "tags=vip")
    imported(data, capture, "c1", "tags=complaint")
    r = retention(data, "v1")
    assert r is not None and (r["rule"], r["mode"], r["policy"]) == ("vip", "compliance", sha)
    assert datetime.fromtimestamp(int(r["until_us"]) / 1e6, UTC).year == 2033  # type: ignore[call-overload]
    # a bad file is refused with its line; the policy in force stays
    bad = tmp_path / "bad.toml"
    bad.write_text(POLICY.replace('keep = "2y"', 'keep = "2 years"'))
    p = run_cli("--data", str(data), "policy", "apply", str(bad), ok=False)
    assert p.returncode == 1
    assert f"{bad} line 13: retention.rule[2].keep: '2 years' is not a duration" in p.stderr
    p = run_cli("policy", "check", str(bad), ok=False)
    assert p.returncode == 1 and "line 13" in p.stderr
    shown = json.loads(run_cli("--data", str(data), "policy", "show", "--json").stdout)
    assert shown["sha256"] == sha
    # --reapply: the call sealed before any policy gets one; compliance is never shortened
    shorter = tmp_path / "short.toml"
    shorter.write_text('[retention]\ndefault = "30d"\n')
    out = run_cli("--data", str(data), "policy", "apply", str(shorter), "--reapply").stdout
    assert "reapplied to 3 sealed call(s): 1 changed" in out
    assert "1 kept a later compliance end, 1 kept a later governance end" in out
    assert retention(data, "v1") == r
    before = retention(data, "before")
    assert before is not None and before["rule"] == "default"  # 30 d from a 2026 end: past
    p = run_cli(
        "--data", str(data), "policy", "apply", str(shorter), "--reapply",
        "--shorten-governance", ok=False,
    )  # fmt: skip
    assert p.returncode == 1 and "needs --reason" in p.stderr
    out = run_cli(
        "--data", str(data), "policy", "apply", str(shorter), "--reapply",
        "--shorten-governance", "--reason", "complaint closed",
    ).stdout  # fmt: skip
    assert "1 changed" in out and "1 kept a later compliance end" in out
    c1 = retention(data, "c1")
    assert c1 is not None and c1["mode"] == "default"
    history = (data / "policy" / "history.jsonl").read_text().splitlines()
    assert len(history) == 3 and len(list((data / "policy" / "versions").iterdir())) == 2


def test_erase_override_retention_locally_and_after_the_end_with_faketime(
    tmp_path: Path, capture: Path
) -> None:
    data = tmp_path / "v"
    f = tmp_path / "p.toml"
    f.write_text(POLICY)
    run_cli("--data", str(data), "init")
    run_cli("--data", str(data), "policy", "apply", str(f))
    for call_id, tags in (("v1", "vip"), ("c1", "complaint"), ("c2", "complaint")):
        imported(data, capture, call_id, f"tags={tags}")
    p = run_cli("--data", str(data), "erase", "c1", "--reason", "asked", ok=False)
    assert p.returncode == 1 and "governance retention until 2028-01-31" in p.stderr
    assert "override" in p.stderr
    p = run_cli(
        "--data", str(data), "erase", "v1", "--reason", "asked", "--override-retention", ok=False
    )
    assert p.returncode == 1 and "compliance retention until 2033-01-31" in p.stderr
    assert "(rule vip)" in p.stderr
    run_cli("--data", str(data), "erase", "c1", "--reason", "asked", "--override-retention")
    with Vault.open(data, read_only=True) as v:
        e = v.get_call("c1")
        assert e.state == "erased" and e.erase_reason.startswith("asked [governance retention")
        assert "overridden by an admin" in e.erase_reason
    # time moved past the governance end: no override needed (faketime, the real CLI)
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is required (Debian package faketime)")
    p = subprocess.run(
        [faketime, "2028-03-01 00:00:00", *CLI, "--data", str(data), "erase", "c2",
         "--reason", "due"],
        capture_output=True, text=True, timeout=120,
        # the wall clock moved, the monotonic one not (else timed waits never end)
        env={**os.environ, "FAKETIME_DONT_FAKE_MONOTONIC": "1"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    with Vault.open(data, read_only=True) as v:
        assert v.get_call("c2").erase_reason == "due"
        assert v.get_call("v1").state == "sealed"


def token(data: Path, name: str, *args: str) -> str:
    out = run_cli("--data", str(data), "token", "create", "--name", name, *args).stdout.strip()
    assert out.startswith("cvt_")
    return out


def test_remote_apply_show_and_erase_override_with_tokens(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "v"
    f = tmp_path / "p.toml"
    f.write_text(POLICY)
    run_cli("--data", str(data), "init")
    admin = token(data, "ops", "--role", "admin", "--platform")
    tenant_admin = token(data, "acme-admin", "--role", "admin", "--tenant", "acme")
    auditor = token(data, "aud", "--role", "auditor", "--platform")
    server = start_server(data)
    try:
        a = ("--server", server.address)
        out = run_cli(*a, "--token", admin, "policy", "show").stdout
        assert "no retention policy applied" in out
        p = run_cli(*a, "--token", tenant_admin, "policy", "apply", str(f), ok=False)
        assert p.returncode == 1 and "belongs to tenant acme" in p.stderr
        p = run_cli(*a, "--token", auditor, "policy", "apply", str(f), ok=False)
        assert p.returncode == 1 and "may not policy" in p.stderr
        bad = tmp_path / "bad.toml"
        bad.write_text(POLICY.replace('mode = "compliance"', 'mode = "strict"'))
        p = run_cli(*a, "--token", admin, "policy", "apply", str(bad), ok=False)
        # the file is checked on both sides: the CLI first, then the server
        assert p.returncode == 1 and "line 8" in p.stderr and "not a mode" in p.stderr
        out = run_cli(*a, "--token", admin, "policy", "apply", str(f), "--json").stdout
        sha = json.loads(out)["sha256"]
        shown = json.loads(run_cli(*a, "--token", auditor, "policy", "show", "--json").stdout)
        assert (shown["sha256"], shown["applied_by"], shown["toml"]) == (sha, "ops", POLICY)
        # the server seals with the policy applied through it
        imported(data, capture, "c1", "tags=complaint", via=f"--server {server.address} "
                 f"--token {tenant_admin}")  # fmt: skip
        imported(data, capture, "c2", "tags=complaint", via=f"--server {server.address} "
                 f"--token {tenant_admin}")  # fmt: skip
        # GetCall shows the retention (CallInfo.retention)
        with Client(server.address, token=tenant_admin) as client:
            r2 = client.get_call("c2").retention
        assert (r2.rule, r2.mode, r2.policy) == ("complaint", "governance", sha)
        assert datetime.fromtimestamp(r2.until_us / 1e6, UTC).year == 2028
        # erase: refused under governance, allowed with the override and recorded
        e = ("erase", "c1", "--reason", "customer asked")
        p = run_cli(*a, "--token", tenant_admin, *e, ok=False)
        assert p.returncode == 1 and "governance retention until 2028-01-31" in p.stderr
        run_cli(*a, "--token", tenant_admin, *e, "--override-retention")
        p = run_cli(*a, "--token", auditor, "--tenant", "acme", "erase", "c2", "--reason", "x",
                    "--override-retention", ok=False)  # fmt: skip
        assert p.returncode == 1 and "may not erase" in p.stderr
        # reapply through the server: counts come back
        shorter = tmp_path / "short.toml"
        shorter.write_text('[retention]\ndefault = "1d"\n')
        out = run_cli(*a, "--token", admin, "policy", "apply", str(shorter), "--reapply").stdout
        assert "reapplied to 1 sealed call(s): 0 changed" in out
        assert "1 kept a later governance end" in out
    finally:
        assert server.stop() == 0, server.output()
    with Vault.open(data, read_only=True) as v:
        c1, c2 = v.get_call("c1", tenant="acme"), v.get_call("c2", tenant="acme")
        assert c1.state == "erased" and "overridden by an admin" in c1.erase_reason
        assert c2.retention is not None and c2.retention["policy"] == sha
        assert (c2.retention["rule"], c2.retention["mode"]) == ("complaint", "governance")


def wait_for(cond: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} after {timeout} s")
        time.sleep(0.1)


def test_config_policy_at_start_and_reloaded_on_sighup(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "v"
    run_cli("--data", str(data), "init")
    config = tmp_path / "server.toml"
    section = POLICY.replace("[retention]", "[policy.retention]").replace(
        "[[retention.rule]]", "[[policy.retention.rule]]"
    )
    config.write_text("max_open_calls = 100\n\n" + section)
    # a bad [policy] stops the server at start, naming the line of the config
    bad = tmp_path / "bad.toml"
    bad.write_text("max_open_calls = 100\n\n" + section.replace('"7y"', '"7yrs"'))
    p = subprocess.run(
        [*CLI, "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--config", str(bad)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 1 and "--config line 9: policy.retention.rule[1].keep" in p.stderr
    server = start_server(data, args=("--config", str(config)))
    try:

        def shown() -> dict[str, object]:
            doc = json.loads(run_cli("--data", str(data), "policy", "show", "--json").stdout)
            assert isinstance(doc, dict)
            return doc

        first = shown()
        assert first["source"] == "config" and "[[retention.rule]]" in str(first["toml"])
        assert [r["name"] for r in first["rules"]] == ["vip", "complaint"]  # type: ignore[attr-defined]
        imported(data, capture, "a", "tags=vip", via=f"--server {server.address}")
        # SIGHUP with a bad [policy]: an ERROR naming the line, the policy stays
        config.write_text(config.read_text().replace('keep = "2y"', 'keep = "2"'))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP" in server.output(), "logged")
        log = server.output()
        assert "ERROR" in log and "line 15" in log and "'2' is not a duration" in log
        assert shown()["sha256"] == first["sha256"]
        # SIGHUP with a good one: applied, calls sealed from now on get it
        config.write_text(config.read_text().replace('keep = "2"', 'keep = "3y"'))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: shown()["sha256"] != first["sha256"], "reloaded")
        now = shown()
        assert now["source"] == "config" and 'keep = "3y"' in str(now["toml"])
        imported(data, capture, "b", "tags=complaint", via=f"--server {server.address}")
        # a policy applied through the server stays until the config's section changes
        other = tmp_path / "other.toml"
        other.write_text('[retention]\ndefault = "90d"\n')
        run_cli("--server", server.address, "policy", "apply", str(other))
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: server.output().count("[policy] unchanged") >= 1, "logged")
        assert shown()["toml"] == '[retention]\ndefault = "90d"\n'
        assert server.alive()
    finally:
        assert server.stop() == 0, server.output()
    a, b = retention(data, "a"), retention(data, "b")
    assert a is not None and b is not None
    assert a["policy"] == first["sha256"] and b["policy"] == now["sha256"]
    assert datetime.fromtimestamp(int(b["until_us"]) / 1e6, UTC).year == 2029  # type: ignore[call-overload]
    # restarted with the same config: the policy applied through the server stays
    server = start_server(data, args=("--config", str(config)))
    try:
        assert shown()["toml"] == '[retention]\ndefault = "90d"\n'
    finally:
        assert server.stop() == 0, server.output()
