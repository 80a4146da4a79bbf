"""Workloads lifecycle_change and disposal: changes to sealed calls (issue 12).

Both start from one template vault made once per module (untimed): CALLS sealed
two-leg calls of tenant "default", each one audio record per leg (10 frames of
made-up packets) and a retention end set at seal (Vault.retention_at_seal, as
the policy wires it). Every round copies the template to a fresh directory and
opens it (untimed), so each round works on the same state; the SQLite peers
likewise get a fresh database file per round with one row per call, made in one
bulk transaction (untimed). The default timer (wall clock) is used: most of
what both sides spend is waiting for fsync, which CPU time would not see.

    lifecycle_change      CALLS tag changes, one per call, each durable before
                          the next starts.
      ours                Vault.change(call, op="tag", changes={"tags": [...]},
                          by=identity, reason=...): canonical JSON document,
                          a LIFECYCLE record chained to the call's seal (SHA-256),
                          appended and fsynced (a group commit of one), its
                          Merkle leaf (kind 7) appended to the log and fsynced,
                          the index batch written, the entry returned. 2 fsyncs
                          per change (the segment file and log/tree; strace -f
                          of Vault.change, RocksDB's WAL is not synced: the
                          index is rebuilt from the segments).
      peer sqlite         stdlib sqlite3 (WAL, synchronous=FULL): per change one
                          transaction (BEGIN IMMEDIATE) of an UPDATE of the
                          call's `calls(tenant, call_id, tags)` row and an
                          INSERT of the change into `changes` (tenant, call_id,
                          seq, time_us, op, by, reason, doc: the same JSON
                          document), COMMIT: 1 fsync of the WAL per change. No
                          hash chain, no Merkle log, no signature material.
      peer sqlite+leaf    the same transaction, then the change's SHA-256 (32
                          bytes) appended to a plain file and fsynced, as ours'
                          log leaf is: 2 fsyncs per change, as ours. Still no
                          chain and no tree (a flat list of hashes).

    disposal              the disposal of CALLS calls whose retention ended.
      ours                callvault.lifecycle.disposal: plan (the clock
                          injected 2 days past every retention end: every call
                          due, the signed disposition report) then apply with
                          reclaim off: per call a receipt (LIFECYCLE record op
                          "dispose", its Merkle leaf) then the crypto-shredding
                          erasure (ERASE record and leaf, the call's key file
                          deleted); the report saved with its results (write
                          + fsync + rename). 4 fsyncs per call (2 for the
                          receipt, 2 for the erasure) plus the report's.
      peer sqlite         stdlib sqlite3 (WAL, synchronous=FULL): a SELECT of
                          the rows due (until_us <= now), then per call one
                          transaction: INSERT of a receipt row (report id,
                          rule, until_us, disposed_us) into `receipts` and
                          DELETE of its `calls` row: 1 fsync per call. No
                          signed report, no chain, no Merkle log, no keys: a
                          deleted SQLite row stays readable in free pages and
                          the WAL until they are overwritten, where ours'
                          audio is unreadable once its key file is gone.

Checked, every round (untimed): lifecycle_change, ours: every call's entry has
the round's tags and one lifecycle record, and three calls verify
(Vault.verify_call returns []); the peers: every row has the new tags and
`changes` has CALLS rows (the leaf file CALLS x 32 bytes). disposal, ours:
apply says CALLS disposed, 0 skipped, every call is erased with its receipt
(disposal names the report), its key file is gone, the report is kept as
applied and verifies with the log's key; the peer: no `calls` row is left and
`receipts` holds CALLS rows.

The sides of each workload run interleaved, round by round, in one loop
(conftest.Interleaved), ROUNDS rounds after one warm-up round. Beside the wall
time, each side's CPU time over its timed part (time.process_time: the whole
process, so ours' committer thread too) goes to extra_info with its fsyncs: ours
spends most of a change waiting, not computing (benchmarks/README.md, notes).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.conftest import Interleaved, Round, Side, Tag, need, sides

CALLS = 200
ROUNDS = 7
WARMUP = 1
TENANT = "default"
T0 = 1_900_000_000_000_000  # the template's clock: 2030-03-17
DAY_US = 86_400 * 1_000_000
UNTIL_US = T0 + DAY_US  # every call's retention end
NOW_US = T0 + 2 * DAY_US  # the disposal's clock: every call due
FRAMES = 10
BY = {"name": "bench", "role": "admin", "tenant": None, "via": "token"}
REASON = "bench: tag change"

CHANGE = "lifecycle_change"
DISPOSAL = "disposal"


def call_id(i: int) -> str:
    return f"lc-{i:04d}"


def new_tags(i: int) -> list[str]:
    return ["bench", "reviewed", f"batch-{i % 7}"]


def retention() -> dict[str, Any]:
    return {"until_us": UNTIL_US, "rule": "bench", "mode": "default", "set_us": T0}


def leg_packets(cid: str, leg: int) -> tuple[Any, bytes]:
    parts = [hashlib.sha256(f"{cid}/{leg}/{f}".encode()).digest() for f in range(FRAMES)]
    return np.full(FRAMES, 32, dtype=np.int32), b"".join(parts)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed vault of CALLS sealed calls, each with a retention end (untimed)."""
    vault = need("callvault.vault")
    path = tmp_path_factory.mktemp("lc") / "template"
    v = vault.Vault.open(path)
    try:
        v.clock = lambda: T0
        v.retention_at_seal = lambda e, end: retention()
        for i in range(CALLS):
            cid = call_id(i)
            w = v.open_call(cid, tenant=TENANT, legs=["agent", "customer"], agent="ann")
            for f in [w.append(leg, 0, *leg_packets(cid, leg)) for leg in (0, 1)]:
                f.result()
            w.seal(summary={"legs": []}, frames=FRAMES)
    finally:
        v.close()
    return path


def fresh_vault(template: Path, where: Path, now_us: int) -> Any:
    vault = need("callvault.vault")
    shutil.copytree(template, where)
    v = vault.Vault.open(where)
    v.clock = lambda: now_us
    return v


def sqlite_open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)  # transactions by hand
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(
        """
        CREATE TABLE calls (tenant TEXT, call_id TEXT, tags TEXT, until_us INTEGER,
                            rule TEXT, PRIMARY KEY (tenant, call_id));
        CREATE TABLE changes (id INTEGER PRIMARY KEY, tenant TEXT, call_id TEXT,
                              seq INTEGER, time_us INTEGER, op TEXT, by TEXT,
                              reason TEXT, doc TEXT);
        CREATE TABLE receipts (id INTEGER PRIMARY KEY, report TEXT, tenant TEXT,
                               call_id TEXT, rule TEXT, until_us INTEGER,
                               disposed_us INTEGER);
        """
    )
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO calls VALUES (?, ?, ?, ?, ?)",
        [(TENANT, call_id(i), '["bench"]', UNTIL_US, "bench") for i in range(CALLS)],
    )
    db.execute("COMMIT")
    return db


@dataclass
class State:
    """What the rounds of one workload made: open handles, checks of every round."""

    loop: Interleaved
    vaults: list[Any] = field(default_factory=list)
    dbs: dict[str, list[sqlite3.Connection]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    checked: dict[str, int] = field(default_factory=dict)
    groups: list[int] = field(default_factory=list)  # ours' segment group commits per round

    cpu: dict[str, list[float]] = field(default_factory=dict)  # CPU s per round, per side
    _cpu_start: float = 0.0

    def with_cpu(self, side: str, work: Round) -> Round:
        """``work`` with the process's CPU time over its timed part recorded (read
        last in setup and first in teardown: outside the timed part, not in it)."""
        setup, teardown = work.setup, work.teardown
        assert setup is not None and teardown is not None

        def start() -> tuple[Any, ...]:
            args = setup()
            self._cpu_start = time.process_time()
            return args

        def stop(*args: Any) -> None:
            self.cpu.setdefault(side, []).append(time.process_time() - self._cpu_start)
            teardown(*args)

        return Round(work.run, setup=start, teardown=stop)

    def cpu_info(self, side: str) -> str:
        timed = self.cpu.get(side, [])[WARMUP:]
        if not timed:
            return "-"
        return (
            f"CPU of the process (all threads, time.process_time) per round: median "
            f"{statistics.median(timed):.3f} s over {len(timed)} rounds"
        )

    def check(self, side: str, problems: list[str]) -> None:
        self.checked[side] = self.checked.get(side, 0) + 1
        self.failures.setdefault(side, []).extend(problems)

    def close(self) -> None:
        for v in self.vaults:
            v.close()
        for dbs in self.dbs.values():
            for db in dbs:
                db.close()


# -- lifecycle_change ----------------------------------------------------------------------


def change_all(v: Any) -> int:
    """lifecycle_change, ours: one durable Vault.change per call."""
    n = 0
    for i in range(CALLS):
        e = v.change(
            call_id(i),
            tenant=TENANT,
            op="tag",
            changes={"tags": new_tags(i)},
            by=BY,
            reason=REASON,
            expect_seq=0,
        )
        n += e.lifecycle_count
    return n


def change_doc(i: int, seq: int) -> str:
    return json.dumps(
        {"v": 1, "seq": seq, "op": "tag", "by": BY, "reason": REASON, "set": {"tags": new_tags(i)}},
        sort_keys=True,
        separators=(",", ":"),
    )


def sqlite_change_all(db: sqlite3.Connection, leaf_fd: int | None) -> int:
    """lifecycle_change, peers: per change one transaction (UPDATE + INSERT), and
    with ``leaf_fd`` the change's SHA-256 appended to a file and fsynced."""
    n = 0
    by = json.dumps(BY, sort_keys=True)
    for i in range(CALLS):
        cid = call_id(i)
        doc = change_doc(i, 1)
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "UPDATE calls SET tags = ? WHERE tenant = ? AND call_id = ?",
            (json.dumps(new_tags(i)), TENANT, cid),
        )
        db.execute(
            "INSERT INTO changes (tenant, call_id, seq, time_us, op, by, reason, doc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (TENANT, cid, 1, T0, "tag", by, REASON, doc),
        )
        db.execute("COMMIT")
        if leaf_fd is not None:
            os.write(leaf_fd, hashlib.sha256(doc.encode()).digest())
            os.fsync(leaf_fd)
        n += 1
    return n


def check_vault_changes(v: Any) -> list[str]:
    problems = []
    for i in range(CALLS):
        e = v.get_call(call_id(i), tenant=TENANT)
        if list(e.tags) != new_tags(i) or e.lifecycle_count != 1:
            problems.append(f"{call_id(i)}: tags {e.tags}, {e.lifecycle_count} changes")
    for i in (0, CALLS // 2, CALLS - 1):
        if v.verify_call(call_id(i), tenant=TENANT) != []:
            problems.append(f"{call_id(i)} does not verify after its change")
    return problems


def check_sqlite_changes(db: sqlite3.Connection) -> list[str]:
    problems = []
    rows = dict(db.execute("SELECT call_id, tags FROM calls").fetchall())
    for i in range(CALLS):
        if rows.get(call_id(i)) != json.dumps(new_tags(i)):
            problems.append(f"{call_id(i)}: tags {rows.get(call_id(i))}")
    (n,) = db.execute("SELECT count(*) FROM changes").fetchone()
    if n != CALLS:
        problems.append(f"{n} rows in changes, not {CALLS}")
    return problems


@pytest.fixture(scope="module")
def change_rounds(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    tmp = tmp_path_factory.mktemp("change")
    state: State

    def ours_side() -> Round:
        def setup() -> tuple[Any, ...]:
            if state.vaults:
                state.vaults.pop().close()
            v = fresh_vault(template, tmp / f"v{state.checked.get('ours', 0)}", T0)
            state.vaults.append(v)
            v._writer.flush()  # noqa: SLF001 - the group count is the writer's
            state.groups.append(-v._writer.groups)  # noqa: SLF001
            return (v,)

        def teardown(v: Any) -> None:
            v._writer.flush()  # noqa: SLF001
            state.groups[-1] += v._writer.groups  # noqa: SLF001
            state.check("ours", check_vault_changes(v))

        return state.with_cpu("ours", Round(change_all, setup=setup, teardown=teardown))

    def peer_side(name: str, leaf: bool) -> Round:
        fds: list[int] = []

        def setup() -> tuple[Any, ...]:
            k = state.checked.get(name, 0)
            db = sqlite_open(tmp / f"{name}{k}.db")
            state.dbs.setdefault(name, []).append(db)
            if not leaf:
                return (db, None)
            fd = os.open(tmp / f"{name}{k}.leaves", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fsync(fd)
            fds.append(fd)
            return (db, fd)

        def teardown(db: sqlite3.Connection, fd: int | None) -> None:
            problems = check_sqlite_changes(db)
            if fd is not None:
                size = os.fstat(fd).st_size
                os.close(fd)
                if size != CALLS * 32:
                    problems.append(f"the leaf file has {size} bytes, not {CALLS * 32}")
            state.check(name, problems)
            db.close()
            state.dbs[name].remove(db)

        return state.with_cpu(name, Round(sqlite_change_all, setup=setup, teardown=teardown))

    state = State(
        Interleaved(
            {
                "ours": ours_side,
                "sqlite": lambda: peer_side("sqlite", False),
                "sqlite_leaf": lambda: peer_side("sqlite_leaf", True),
            },
            rounds=ROUNDS,
            warmup_rounds=WARMUP,
        )
    )
    try:
        yield state
    finally:
        state.close()


def what_change() -> str:
    return (
        f"{CALLS} tag changes of sealed calls, one per call, each durable before the "
        "next; a fresh copy of the same vault / database per round"
    )


@pytest.fixture
def change_side(benchmark: Any, workload: Tag, change_rounds: State) -> Side:
    return sides(
        benchmark, workload, change_rounds.loop, CHANGE, units=CALLS, unit="change",
        rates={"changes": CALLS},
    )  # fmt: skip


def rounds_checked(state: State, side: str, benchmark: Any, fsyncs: str) -> None:
    """Every round of ``side`` was checked and passed; its fsyncs and CPU to the report."""
    assert state.checked.get(side, 0) >= 1, f"no round of {side} was checked"
    assert state.failures.get(side) == [], f"{side}: {state.failures.get(side, [])[:5]}"
    benchmark.extra_info["fsyncs"] = f"{fsyncs}; {state.cpu_info(side)}"


def test_lifecycle_change_ours(change_side: Side, change_rounds: State, benchmark: Any) -> None:
    need("callvault.vault")
    n = change_side("ours", "ours", what=what_change())
    assert n == CALLS  # every change returned an entry with one lifecycle record
    groups = change_rounds.groups
    assert groups and all(g == CALLS for g in groups), f"group commits per round: {groups}"
    rounds_checked(
        change_rounds,
        "ours",
        benchmark,
        f"2 fsyncs per change: segment group commits per round {groups} (one per change) "
        "and one fsync of the Merkle log per change",
    )


def test_lifecycle_change_peer_sqlite(
    change_side: Side, change_rounds: State, benchmark: Any
) -> None:
    n = change_side(
        "peer",
        "sqlite",
        peer=f"sqlite3 {sqlite3.sqlite_version} (WAL, synchronous=FULL): per change one "
        "transaction, UPDATE of the calls row + INSERT into changes (1 fsync); no hash "
        "chain, no Merkle log",
    )
    assert n == CALLS
    rounds_checked(change_rounds, "sqlite", benchmark, "1 fsync per change (the WAL commit)")


def test_lifecycle_change_peer_sqlite_leaf(
    change_side: Side, change_rounds: State, benchmark: Any
) -> None:
    n = change_side(
        "peer",
        "sqlite_leaf",
        peer=f"sqlite3 {sqlite3.sqlite_version} as the sqlite peer, plus the change's "
        "SHA-256 appended to a file and fsynced (2 fsyncs per change, as ours); no chain, "
        "no tree",
    )
    assert n == CALLS
    rounds_checked(
        change_rounds, "sqlite_leaf", benchmark, "2 fsyncs per change (WAL commit, leaf file)"
    )


# -- disposal ------------------------------------------------------------------------------


def dispose_all(v: Any) -> tuple[Any, dict[str, Any]]:
    """disposal, ours: plan, then apply with reclaim off."""
    disposal = need("callvault.lifecycle.disposal")
    report = disposal.plan(v, by=BY)
    out = disposal.apply(v, report, by=BY, reclaim_threshold=None)
    return report, out


def sqlite_dispose_all(db: sqlite3.Connection) -> int:
    """disposal, peer: the rows due, then per row a receipt and the delete, one
    durable transaction each."""
    due = db.execute(
        "SELECT tenant, call_id, rule, until_us FROM calls WHERE until_us <= ? "
        "ORDER BY tenant, call_id",
        (NOW_US,),
    ).fetchall()
    report = "dr-" + hashlib.sha256(repr(due).encode()).hexdigest()[:32]
    for tenant, cid, rule, until in due:
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO receipts (report, tenant, call_id, rule, until_us, disposed_us) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (report, tenant, cid, rule, until, NOW_US),
        )
        db.execute("DELETE FROM calls WHERE tenant = ? AND call_id = ?", (tenant, cid))
        db.execute("COMMIT")
    return len(due)


def check_vault_disposal(v: Any) -> list[str]:
    """The round's report, as kept in the vault (it verifies with the log's key), and
    every call erased by it."""
    disposal = need("callvault.lifecycle.disposal")
    kept = disposal.reports(v)
    if len(kept) != 1:
        return [f"{len(kept)} disposition reports kept, not 1"]
    report = disposal.load(v, kept[0].id)  # verifies the signature with the log's key
    out = report.results or {"disposed": 0, "skipped": "no results"}
    problems = []
    if report.status != "applied" or len(report.calls) != CALLS:
        problems.append(f"the report is {report.status} with {len(report.calls)} calls")
    if (out["disposed"], out["skipped"]) != (CALLS, 0):
        problems.append(f"disposed {out['disposed']}, skipped {out['skipped']}")
    for i in range(CALLS):
        cid = call_id(i)
        e = v.get_call(cid, tenant=TENANT)
        if e.state != "erased" or (e.disposal or {}).get("report") != report.id:
            problems.append(f"{cid}: {e.state}, disposal {e.disposal}")
        if v.call_keys.path(TENANT, cid).exists():
            problems.append(f"{cid}: its key file is still there")
    return problems


def check_sqlite_disposal(db: sqlite3.Connection) -> list[str]:
    (left,) = db.execute("SELECT count(*) FROM calls").fetchone()
    (receipts,) = db.execute("SELECT count(*) FROM receipts").fetchone()
    if (left, receipts) != (0, CALLS):
        return [f"{left} calls rows left, {receipts} receipts"]
    return []


@pytest.fixture(scope="module")
def disposal_rounds(template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[State]:
    tmp = tmp_path_factory.mktemp("disposal")
    state: State

    def ours_side() -> Round:
        def setup() -> tuple[Any, ...]:
            if state.vaults:
                state.vaults.pop().close()
            v = fresh_vault(template, tmp / f"v{state.checked.get('ours', 0)}", NOW_US)
            state.vaults.append(v)
            return (v,)

        def teardown(v: Any) -> None:
            state.check("ours", check_vault_disposal(v))

        return state.with_cpu("ours", Round(dispose_all, setup=setup, teardown=teardown))

    def peer_side() -> Round:
        def setup() -> tuple[Any, ...]:
            db = sqlite_open(tmp / f"sqlite{state.checked.get('sqlite', 0)}.db")
            state.dbs.setdefault("sqlite", []).append(db)
            return (db,)

        def teardown(db: sqlite3.Connection) -> None:
            state.check("sqlite", check_sqlite_disposal(db))
            db.close()
            state.dbs["sqlite"].remove(db)

        return state.with_cpu("sqlite", Round(sqlite_dispose_all, setup=setup, teardown=teardown))

    state = State(
        Interleaved({"ours": ours_side, "sqlite": peer_side}, rounds=ROUNDS, warmup_rounds=WARMUP)
    )
    try:
        yield state
    finally:
        state.close()


@pytest.fixture
def disposal_side(benchmark: Any, workload: Tag, disposal_rounds: State) -> Side:
    return sides(
        benchmark, workload, disposal_rounds.loop, DISPOSAL, units=CALLS, unit="call",
        rates={"calls": CALLS},
    )  # fmt: skip


def test_disposal_ours(disposal_side: Side, disposal_rounds: State, benchmark: Any) -> None:
    need("callvault.lifecycle.disposal")
    report, out = disposal_side(
        "ours",
        "ours",
        what=f"{CALLS} sealed calls past their retention: disposal.plan (signed report) "
        "and disposal.apply without reclaim (receipt + crypto-shredding per call), a "
        "fresh copy of the same vault per round",
    )
    assert len(report.calls) == CALLS and out["disposed"] == CALLS
    rounds_checked(
        disposal_rounds,
        "ours",
        benchmark,
        "4 fsyncs per call (receipt record and its leaf, erasure record and its leaf) "
        "plus the report's",
    )


def test_disposal_peer_sqlite(disposal_side: Side, disposal_rounds: State, benchmark: Any) -> None:
    n = disposal_side(
        "peer",
        "sqlite",
        peer=f"sqlite3 {sqlite3.sqlite_version} (WAL, synchronous=FULL): SELECT of the rows "
        "due, then per call one transaction, INSERT of a receipt row + DELETE of the call's "
        "row (1 fsync); no signed report, no chain, no Merkle log, no key destroyed (the "
        "deleted row stays in free pages and the WAL)",
    )
    assert n == CALLS
    rounds_checked(disposal_rounds, "sqlite", benchmark, "1 fsync per call (the WAL commit)")
