"""DECISION records (docs/format.md 8.13): a call the recording policy did not record
is a metadata-only record, durable, indexed, a leaf of the Merkle log, rebuilt by
reindex and kept by reclaim; its call id can never be opened as a call."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callvault.errors import InputError
from callvault.integrity import merkle
from callvault.integrity.leaves import decision_leaf
from callvault.media import sample
from callvault.vault import Vault

DOC = {
    "recorded": False,
    "rule": "consent",
    "reason": "region ca needs every party's consent",
    "region": "ca",
    "consent": "declined",
}


def test_decision_is_durable_provable_and_rebuilt(tmp_path: Path) -> None:
    data = tmp_path / "v"
    cap = tmp_path / "c.pcap"
    sample.demo_capture(cap, seconds=2.0)
    with Vault.open(data) as v:
        v.import_call("rec-1", [str(cap)], tenant="t1")
        d = v.record_decision("no-1", DOC, tenant="t1")
        assert d.doc == DOC and d.log_index >= 0 and d.time_us > 0
        # the same call decided again keeps its first decision; no second record
        again = v.record_decision("no-1", {**DOC, "rule": "other"}, tenant="t1")
        assert again == d
        with pytest.raises(InputError, match="decided not recorded"):
            v.open_call("no-1", tenant="t1")
        with pytest.raises(InputError, match="already exists"):
            v.record_decision("rec-1", DOC, tenant="t1")
        with pytest.raises(ValueError, match="not recorded"):
            v.record_decision("x", {**DOC, "recorded": True}, tenant="t1")
        # its leaf is in the log: provable
        size, leaf, path, root = v.inclusion_proof(d.log_index)
        doc = json.dumps(DOC, sort_keys=True, separators=(",", ":")).encode()
        assert leaf == merkle.leaf_hash(decision_leaf("t1", "no-1", doc, d.time_us))
        assert merkle.root_from_inclusion_proof(d.log_index, size, leaf, path) == root
        assert [x.call_id for x in v.index.decisions("t1")] == ["no-1"]
        assert list(v.index.decisions("t2")) == []
        assert list(v.index.decisions("t1", since_us=d.time_us + 1)) == []
        assert v.index.get_call("t1", "no-1") is None  # not a call
        assert v.verify_all() == []
    with Vault.open(data, rebuild_index=True) as v:  # from the segments alone
        assert v.get_decision("no-1", tenant="t1") == d
        assert v.log_size() == 2  # the seal and the decision, no leaf appended again
    with Vault.open(data, segment_bytes=4096) as v:  # small segments: closed soon
        # a reclaim that rewrites the closed segments keeps the DECISION record
        v.erase("rec-1", reason="test", tenant="t1")
        for i in range(3):  # more records, so the decision's segment is a closed one
            v.record_decision(f"pad-{i}", {**DOC, "reason": "x" * 2000}, tenant="t2")
        r = v.reclaim(threshold=0.0001, scan=True)
        assert r.segments_rewritten + r.segments_removed >= 1, r
    with Vault.open(data, rebuild_index=True) as v:
        got = v.get_decision("no-1", tenant="t1")
        assert got is not None and got.doc == DOC and got.log_index == d.log_index


def test_decisions_listed_by_time_both_ways(tmp_path: Path) -> None:
    with Vault.open(tmp_path / "v") as v:
        made = [v.record_decision(f"d-{i}", DOC, tenant="t1") for i in range(5)]
        v.record_decision("other", DOC, tenant="t10")  # a tenant whose name extends t1's
        times = [d.time_us for d in made]
        assert [d.call_id for d in v.index.decisions("t1")] == [f"d-{i}" for i in range(5)]
        assert [d.call_id for d in v.index.decisions("t1", reverse=True)] == [
            f"d-{i}" for i in reversed(range(5))
        ]
        window = v.index.decisions("t1", since_us=times[1], until_us=times[3])
        assert [d.call_id for d in window] == ["d-1", "d-2"]
        window = v.index.decisions("t1", since_us=times[1], until_us=times[3], reverse=True)
        assert [d.call_id for d in window] == ["d-2", "d-1"]
        assert [d.call_id for d in v.index.decisions("t10")] == ["other"]
