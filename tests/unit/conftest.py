"""The unit tier: pure logic on canned values, in milliseconds. A test here that starts a process, forks
or makes a Dask cluster or client fails at once: that test belongs in tests/, beside the module's
end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest

DASK_MACHINERY = ("Client", "LocalCluster", "SpecCluster", "Scheduler", "Worker", "Nanny")


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a unit test must not {what}")

    return refuse


class _NoDistributed:
    """Refuses ``import distributed``: nothing a unit test exercises needs it."""

    def find_spec(self, name, path=None, target=None):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError(f"a unit test must not import {name}")
        return None


@pytest.fixture(autouse=True)
def no_machinery(monkeypatch):
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _refuse("start a process"))
    monkeypatch.setattr(os, "fork", _refuse("fork"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("start a process"))
    distributed = sys.modules.get("distributed")
    if distributed is None:
        monkeypatch.setattr(sys, "meta_path", [_NoDistributed(), *sys.meta_path])
    else:  # imported by the tests of a whole-suite run: refuse what starts its machinery
        for name in DASK_MACHINERY:
            monkeypatch.setattr(getattr(distributed, name), "__init__", _refuse(f"make a Dask {name}"))
    yield
