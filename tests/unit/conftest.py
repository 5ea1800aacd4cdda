"""The unit tier: pure logic on canned values, in milliseconds. A test here that starts a process, forks
or makes a Dask cluster or client fails at once: that test belongs in tests/, beside the module's
end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import subprocess

import distributed
import pytest

DASK_MACHINERY = ("Client", "LocalCluster", "SpecCluster", "Scheduler", "Worker", "Nanny")


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a unit test must not {what}")

    return refuse


@pytest.fixture(autouse=True)
def no_machinery(monkeypatch):
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("start a process"))
    monkeypatch.setattr(asyncio, "create_subprocess_exec", _refuse("start a process"))
    monkeypatch.setattr(os, "fork", _refuse("fork"))
    monkeypatch.setattr(os, "posix_spawn", _refuse("start a process"))
    for name in DASK_MACHINERY:  # importing Dask is allowed; starting its machinery is not
        monkeypatch.setattr(getattr(distributed, name), "__init__", _refuse(f"make a Dask {name}"))
    yield
