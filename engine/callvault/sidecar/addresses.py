"""The sidecar's command-line addresses: ``HOST:PORT`` (``--server``, ``--listen``)
and the RTP port range ``HOST:PMIN-PMAX`` (``--rtp``)."""

from __future__ import annotations

from callvault.errors import CallvaultError


def parse_address(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise CallvaultError(f"{what} {value!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_rtp_range(value: str) -> tuple[str, int, int]:
    host, sep, ports = value.rpartition(":")
    lo, dash, hi = ports.partition("-")
    if (
        not sep
        or not host
        or not dash
        or not lo.isdigit()
        or not hi.isdigit()
        or not 1 <= int(lo) <= int(hi) <= 65535
    ):
        raise CallvaultError(
            f"--rtp {value!r}: expected HOST:PMIN-PMAX, 1 <= PMIN <= PMAX <= 65535"
        )
    return host.strip("[]"), int(lo), int(hi)
