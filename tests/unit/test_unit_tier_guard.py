"""The unit tier's guard works: starting the machinery from a unit test fails it."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_a_subprocess_in_a_unit_test_fails_it():
    with pytest.raises(AssertionError, match="a unit test must not"):
        subprocess.run([sys.executable, "-c", "pass"])


def test_a_dask_client_in_a_unit_test_fails_it():
    with pytest.raises((AssertionError, ImportError), match="a unit test must not"):
        import distributed

        distributed.Client()
