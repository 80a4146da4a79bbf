"""Test-suite settings shared by every test module."""

import os

from hypothesis import settings

# CI runs the fuzz tests on a fixed sequence of examples (derandomized) so a
# landing is not decided by chance; local runs explore new examples each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
