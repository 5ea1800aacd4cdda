"""A stop signal that comes while a finished part is written and counted stops the run after both."""

from __future__ import annotations

import signal

import pytest

from batchclf.errors import STOP_SIGNALS, Interrupted
from batchclf.supervise import signals_deferred, stop_on_signals


@pytest.fixture
def stop_handlers():
    saved = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    stop_on_signals()
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def test_a_signal_inside_the_block_stops_the_run_once_the_block_is_done(stop_handlers):
    done = []
    with pytest.raises(Interrupted) as stopped:
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)  # in this thread: handled before it returns
            done.append("part written")
            done.append("part counted")
    assert done == ["part written", "part counted"] and stopped.value.signal_number == signal.SIGTERM
    with signals_deferred():  # nothing left pending: the next block runs to its end
        done.append("next part")
    assert done[-1] == "next part"


def test_a_block_that_fails_stops_with_its_own_error_and_leaves_nothing_pending(stop_handlers):
    with pytest.raises(OSError, match="disk full"):
        with signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            raise OSError("disk full")
    done = []
    with signals_deferred():
        done.append("next part")
    assert done == ["next part"]


def test_a_signal_outside_the_block_stops_the_run_at_once(stop_handlers):
    done = []
    with pytest.raises(Interrupted):
        signal.raise_signal(signal.SIGHUP)
        done.append("not reached")
    assert done == []
