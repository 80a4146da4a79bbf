"""Export bundles: what `verify-bundle` refuses in call.ogg's headers and in the file set,
and what a bundle's keys can decrypt (real vault, real files)."""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from callvault import _opus
from callvault.integrity.bundle import verify_bundle
from callvault.media import ogg, sample
from callvault.vault import Vault
from callvault.vault.bundle import write_bundle


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cap") / "call.pcap"
    agent, customer = sample.dialogue(3.0)
    sample.write_capture(
        p,
        [
            (agent, sample.LegPlan(ssrc=1, src=("10.0.0.1", 4000), dst=("10.0.0.2", 5000))),
            (
                customer,
                sample.LegPlan(law=8, ssrc=2, src=("10.0.0.2", 5002), dst=("10.0.0.1", 4002)),
            ),
        ],
    )
    return p


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


TAMPERS: dict[str, tuple[Callable[[Path], None], str]] = {
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
