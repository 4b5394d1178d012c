"""A stop signal that lands where Python cannot raise (a ``__del__``, an at-fork hook such as logging's
``_releaseLock`` while a server is spawned) is remembered and raised again later, without a traceback on stderr."""

import gc
import sys

import pytest

from servingbench.runtime import supervisor


class _RaisesOnDel:
    def __del__(self):
        supervisor.request_stop("signal SIGINT")


def test_a_lost_stop_prints_nothing_and_is_raised_at_the_next_check(capsys):
    with supervisor.terminate_on_signals():
        obj = _RaisesOnDel()
        del obj  # KeyboardInterrupt inside __del__: unraisable
        gc.collect()
        err = capsys.readouterr().err
        assert "Traceback" not in err and "Exception ignored" not in err, err
        with pytest.raises(KeyboardInterrupt, match="SIGINT"):
            supervisor.raise_if_stop_requested()


@pytest.fixture
def seen(monkeypatch):
    """Record what reaches the hook installed before servingbench's (pytest's own would turn it into a warning)."""
    got = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: got.append(u.exc_value))
    yield got
    supervisor._STOP.clear()


def test_other_unraisable_errors_still_reach_the_previous_hook(seen):
    class Other:
        def __del__(self):
            raise ValueError("not a stop")

    with supervisor.terminate_on_signals():
        obj = Other()
        del obj
        gc.collect()
        lost = _RaisesOnDel()
        del lost
        gc.collect()
    assert [type(e) for e in seen] == [ValueError]


def test_without_the_hook_the_lost_stop_would_be_reported(seen):
    """The tests above can fail: outside the block the stop's KeyboardInterrupt goes to the previous hook."""
    obj = _RaisesOnDel()
    del obj
    gc.collect()
    assert [type(e) for e in seen] == [KeyboardInterrupt]
