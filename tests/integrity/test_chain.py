"""callvault.integrity.chain: the per-call hash chain and seal, and our tamper vectors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from callvault.integrity import chain
from callvault.integrity.chain import Chain, ChainError

VECTORS = Path(__file__).parent / "vectors" / "chain"


def _vectors() -> list[Path]:
    files = sorted(VECTORS.glob("*.json"))
    assert len(files) >= 10, (
        "chain vectors missing: run python -m tests.integrity.vectors.make_chain_vectors"
    )
    return files


@pytest.mark.parametrize("path", _vectors(), ids=lambda p: p.stem)
def test_chain_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    kwargs = dict(
        heads=[bytes.fromhex(h) for h in v["heads"]],
        manifest=bytes.fromhex(v["manifest"]),
        expect_seal=bytes.fromhex(v["seal"]),
    )
    records = [bytes.fromhex(r) for r in v["records"]]
    if v["wantErr"]:
        with pytest.raises(ChainError, match=v["errContains"]):
            chain.verify(v["tenant"], v["callId"], records, **kwargs)  # type: ignore[arg-type]
    else:
        chain.verify(v["tenant"], v["callId"], records, **kwargs)  # type: ignore[arg-type]


def test_vectors_are_what_the_generator_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.integrity.vectors import make_chain_vectors as gen

    monkeypatch.setattr(gen, "OUT", tmp_path)
    gen.main()
    for path in _vectors():
        assert (tmp_path / path.name).read_text() == path.read_text(), path.name


def test_roles_are_domain_separated() -> None:
    # a genesis, a link and a seal over the "same" bytes never coincide, and
    # none is an RFC 6962 leaf or node hash of those bytes
    import hashlib

    g = chain.genesis("t", "c")
    link = chain.link(g, 0, b"x")
    sealed = chain.seal(g, 0, b"x")
    leaf = hashlib.sha256(b"\x00" + g + b"x").digest()
    node = hashlib.sha256(b"\x01" + g + link).digest()
    assert len({g, link, sealed, leaf, node}) == 5


def test_link_depends_on_position() -> None:
    g = chain.genesis("t", "c")
    assert chain.link(g, 0, b"r") != chain.link(g, 1, b"r")


def test_genesis_separates_tenants_and_calls() -> None:
    assert chain.genesis("a", "bc") != chain.genesis("ab", "c")
    assert chain.genesis("a", "b") != chain.genesis("b", "a")


def test_empty_call_seals() -> None:
    c = Chain("t", "c")
    assert c.count == 0
    assert chain.verify("t", "c", [], expect_count=0, manifest=b"m", expect_seal=c.seal(b"m"))


def test_bad_ids_rejected() -> None:
    with pytest.raises(ValueError, match="tenant"):
        chain.genesis("", "c")
    with pytest.raises(ValueError, match="call id"):
        chain.genesis("t", "x" * 256)
