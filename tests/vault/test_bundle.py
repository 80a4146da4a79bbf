"""Export bundles: what `verify-bundle` refuses in call.ogg's headers and in the file set,
and what a bundle's keys can decrypt (real vault, real files)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from callvault import _opus
from callvault.integrity.bundle import verify_bundle
from callvault.media import ogg
from callvault.store import crypto
from callvault.store import records as rec
from callvault.vault import Vault, VaultError
from callvault.vault.bundle import write_bundle
from tests.rtpfeed import write_two_law_capture


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_two_law_capture(tmp_path_factory.mktemp("cap") / "call.pcap", 3.0)


@pytest.fixture
def bundle(tmp_path: Path, capture: Path) -> tuple[Path, str]:
    v = Vault.open(tmp_path / "data")
    v.import_call("c1", [str(capture)], agent="ann", customer_number="+15551234567")
    d = write_bundle(v, "c1", tmp_path / "bundle")
    key = v.signer.verifier_key()
    v.close()
    return d, key


def _patch_head(d: Path, fmt: str, offset: int, value: int) -> None:
    """Change one OpusHead field of call.ogg in place and fix the page CRC, as an
    attacker would (the file stays a valid Ogg Opus file)."""
    p = d / "call.ogg"
    raw = bytearray(p.read_bytes())
    nseg = raw[26]
    body = 27 + nseg  # the OpusHead packet is alone on page 0
    assert raw[body : body + 8] == b"OpusHead"
    struct.pack_into(fmt, raw, body + offset, value)
    page_end = body + sum(raw[27:body])
    raw[22:26] = bytes(4)
    crc = _opus.ogg_crc(bytes(raw[26:page_end]), _opus.ogg_crc(bytes(raw[:26])))
    struct.pack_into("<I", raw, 22, crc)
    p.write_bytes(bytes(raw))
    ogg.OggOpusReader(p)  # still a valid file


def _rewrite(d: Path, **writer_args: object) -> None:
    """Rewrite call.ogg with the same packets and length but other writer arguments."""
    p = d / "call.ogg"
    r = ogg.OggOpusReader(p)
    out = io.BytesIO()
    args: dict[str, object] = {
        "channels": r.channels,
        "pre_skip": r.pre_skip,
        "comments": r.comments,
        "input_sample_rate": r.input_sample_rate,
    }
    args.update(writer_args)
    w = ogg.OggOpusWriter(out, **args)  # type: ignore[arg-type]
    data, lengths = r.packets_data()
    w.write_packets(data, lengths)
    w.close(duration_48k=r.duration_48k)
    p.write_bytes(out.getvalue())


TAMPERS: dict[str, tuple[Callable[[Path], object], str]] = {
    # -128 dB: plays as silence
    "output-gain": (lambda d: _patch_head(d, "<h", 16, -32768), "OpusHead output_gain"),
    # drops 0.41 s at the start
    "pre-skip": (lambda d: _patch_head(d, "<H", 10, 20000), "OpusHead pre_skip"),
    "input-rate": (lambda d: _patch_head(d, "<I", 12, 44100), "OpusHead input_sample_rate"),
    "vendor": (lambda d: _rewrite(d, vendor="evil encoder"), "OpusTags vendor"),
    "extra-comment": (
        lambda d: _rewrite(d, comments={**ogg.OggOpusReader(d / "call.ogg").comments, "X": "1"}),
        "comment X=",
    ),
    "changed-channel-comment": (
        lambda d: _rewrite(d, comments={"CALLVAULT_CHANNEL_0": "x", "CALLVAULT_CHANNEL_1": "y"}),
        "comment CALLVAULT_CHANNEL_0",
    ),
    "extra-file": (
        lambda d: (d / "notes.txt").write_text("hi\n"),
        "unknown file in the bundle: notes.txt",
    ),
    "extra-record-file": (
        lambda d: (d / "records" / "README").write_text("x"),
        "unknown file in the bundle: records/README",
    ),
}


def test_untouched_bundle_passes_the_header_check(bundle: tuple[Path, str]) -> None:
    d, key = bundle
    r = verify_bundle(d, public_key=key)
    assert r.ok, r.failures
    assert any("OpusHead, OpusTags" in c for c in r.checked), r.checked


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_bundle_header_tampering_is_refused_by_name(tamper: str, bundle: tuple[Path, str]) -> None:
    d, key = bundle
    fn, named = TAMPERS[tamper]
    fn(d)
    r = verify_bundle(d, public_key=key)
    assert not r.ok, f"{tamper} went unnoticed"
    assert any(named in f for f in r.failures), r.failures


# -- the customer number: only in a bundle asked for with it ---------------------------

NUMBER = "+15551234567"


def _open_number(d: Path, key_file: str) -> str:
    """Decrypt the manifest's sealed customer number with a key file of the bundle, as
    anyone holding the bundle could (every AAD a callvault has used)."""
    m = json.loads((d / "manifest.json").read_text())
    sealed = m["customer_number_sealed"]
    key = bytes.fromhex((d / key_file).read_text().strip())
    aad = rec.call_aad(m["tenant"], m["call_id"])
    blob = bytes.fromhex(sealed.removeprefix(rec.NUMBER_PREFIX))
    for extra in (b"", rec.NUMBER_AAD):
        try:
            return crypto.decrypt_blob(key, blob=blob, aad=aad + extra).decode()
        except crypto.CryptoError:
            pass
    raise crypto.CryptoError(f"{key_file} does not open the customer number")


def test_default_bundle_cannot_reveal_the_customer_number(bundle: tuple[Path, str]) -> None:
    d, key = bundle
    assert not (d / "customer-number.key").exists()
    with pytest.raises(crypto.CryptoError):
        _open_number(d, "call.key")
    r = verify_bundle(d, public_key=key)
    assert r.ok, r.failures


def test_bundle_with_the_customer_number_opens_it(tmp_path: Path, capture: Path) -> None:
    v = Vault.open(tmp_path / "data")
    v.import_call("c1", [str(capture)], customer_number=NUMBER)
    d = write_bundle(v, "c1", tmp_path / "bundle", with_customer_number=True)
    key = v.signer.verifier_key()
    v.close()
    assert _open_number(d, "customer-number.key") == NUMBER
    with pytest.raises(crypto.CryptoError):
        _open_number(d, "call.key")
    r = verify_bundle(d, public_key=key)
    assert r.ok, r.failures
    assert "customer-number.key opens the sealed customer number" in r.checked
    (d / "customer-number.key").write_text("00" * 32 + "\n")
    r = verify_bundle(d, public_key=key)
    assert any("customer-number.key does not open" in f for f in r.failures), r.failures


def test_call_of_an_older_vault_keeps_its_number_readable(tmp_path: Path) -> None:
    """A vault written by the callvault before this change is read by this one; its
    call's number is under the data key, so a bundle needs the option."""
    # written by callvault at commit 909f696 (tests/vault/data/make_vault_909f696.py)
    with tarfile.open(Path(__file__).parent / "data" / "vault-909f696.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    (tmp_path / "vault").rename(tmp_path / "data")
    v = Vault.open(tmp_path / "data")
    try:
        assert not v.get_call("c1").customer_number_sealed.startswith(rec.NUMBER_PREFIX)
        assert v.customer_number("c1") == NUMBER
        with pytest.raises(VaultError, match="with-customer-number"):
            write_bundle(v, "c1", tmp_path / "b1")
        assert not (tmp_path / "b1").exists()
        d = write_bundle(v, "c1", tmp_path / "b2", with_customer_number=True)
        assert _open_number(d, "call.key") == NUMBER
        assert verify_bundle(d, public_key=v.signer.verifier_key()).ok
    finally:
        v.close()
