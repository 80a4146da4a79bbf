"""The checks before an erasure and the erasure itself are one step: a legal hold
placed at that moment waits for the erasure (and is then refused, the call being
erased) instead of landing in between and being shredded with the call. And a
lifecycle change whose record could not be written is not applied by a later open
(the review of issue 12)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from callvault.lifecycle import holds
from callvault.media import sample
from callvault.vault import Vault, VaultError

LEGAL = holds.identity("legal1", "legal")


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    sample.demo_capture(p, seconds=1.0)
    return p


def _hold_meanwhile(v: Vault, call_id: str, out: dict[str, Any]) -> threading.Thread:
    def place() -> None:
        try:
            out["hold"] = holds.place(v, call_id, name="CASE-1", reason="litigation", by=LEGAL)
        except VaultError as e:
            out["refused"] = str(e)

    return threading.Thread(target=place)


def test_a_hold_placed_during_an_erasure_waits_and_is_refused(
    tmp_path: Path, capture: Path
) -> None:
    v = Vault.open(tmp_path / "data")
    try:
        v.import_call("c0", [str(capture)])
        out: dict[str, Any] = {}
        check = v.check_erasable

        def check_then_hold(e: Any, **kw: Any) -> None:
            check(e, **kw)  # passes: no hold yet
            t = _hold_meanwhile(v, "c0", out)
            t.start()  # a legal team places a hold right now, on another thread
            t.join(timeout=1.0)
            out["hold_waited"] = t.is_alive()  # blocked until the erasure is done
            out["thread"] = t

        v.check_erasable = check_then_hold  # type: ignore[method-assign]
        v.erase("c0", reason="customer asked")
        out["thread"].join(timeout=30)
        assert out["hold_waited"] is True
        e = v.get_call("c0")
        assert e.state == "erased" and e.holds == {}
        assert "hold" not in out and "erased" in out["refused"]
    finally:
        v.close()


def test_a_hold_placed_during_a_tenant_erasure_waits(tmp_path: Path, capture: Path) -> None:
    v = Vault.open(tmp_path / "data")
    try:
        v.import_call("c0", [str(capture)], tenant="t1")
        out: dict[str, Any] = {}
        retained = v.retained

        def retained_then_hold(e: Any, **kw: Any) -> str | None:
            why = retained(e, **kw)
            if "thread" not in out:
                t = _hold_meanwhile_tenant(v, out)
                t.start()
                t.join(timeout=1.0)
                out["hold_waited"] = t.is_alive()
                out["thread"] = t
            return why

        v.retained = retained_then_hold  # type: ignore[method-assign]
        v.erase_tenant("t1", reason="contract ended")
        out["thread"].join(timeout=30)
        assert out["hold_waited"] is True
        assert v.get_call("c0", tenant="t1").state == "erased"
        assert "hold" not in out and "erased" in out["refused"]
    finally:
        v.close()


def _hold_meanwhile_tenant(v: Vault, out: dict[str, Any]) -> threading.Thread:
    def place() -> None:
        try:
            out["hold"] = holds.place(
                v, "c0", tenant="t1", name="CASE-1", reason="litigation", by=LEGAL
            )
        except VaultError as e:
            out["refused"] = str(e)

    return threading.Thread(target=place)


# A child process: RLIMIT_FSIZE just above the largest segment makes the next segment
# write fail with EFBIG, as a full disk would (tests/vault/test_vault_damage.py).
CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from callvault.lifecycle import holds
    from callvault.vault import Vault, VaultError
    data = Path(sys.argv[1])
    out = {}
    with Vault.open(data) as v:
        limit = max(p.stat().st_size for p in (data / "segments").iterdir()) + 100
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            holds.place(v, "c0", name="CASE-9", reason="r" * 1000,
                        by=holds.identity("legal1", "legal"))
            out["hold"] = "placed"
        except VaultError as e:
            out["hold"] = str(e)
        out["holds_after"] = sorted(v.get_call("c0").holds)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    print(json.dumps(out))
    """
)


def test_a_change_whose_record_failed_is_not_applied_later(tmp_path: Path, capture: Path) -> None:
    data = tmp_path / "data"
    with Vault.open(data) as v:
        v.import_call("c0", [str(capture)])
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(data)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert "failed, nothing was applied" in out["hold"], out
    assert out["holds_after"] == []
    with Vault.open(data) as v:  # recovery does not apply the change reported failed
        e = v.get_call("c0")
        assert e.holds == {} and e.lifecycle_count == 0
        assert v.verify_all() == []
