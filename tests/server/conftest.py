"""Fixtures of tests/server: the identities of the access tests (access_fixtures.py)."""

from tests.server.access_fixtures import identities

__all__ = ["identities"]
