"""Fixtures of the archive tests: one SeaweedFS per test session, a fresh Object
Lock bucket per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from tests import s3server

_buckets = itertools.count()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3server.S3Server]:
    srv = s3server.start(tmp_path_factory.mktemp("s3"))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def archive_settings(s3: s3server.S3Server) -> dict[str, Any]:
    """An [archive] section for a new bucket (created with Object Lock enabled)."""
    name = f"cv-test-{next(_buckets)}"
    s3.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return {**s3.settings, "bucket": name, "after": "0s"}
