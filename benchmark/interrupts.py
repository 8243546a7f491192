"""Ctrl-C and SIGTERM, acted on where that is safe.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT comes. In
a storage call that can be between a lock's acquisition and its release (SQLAlchemy's
connection pool is a queue.Queue, whose mutex is a plain lock), and the trial's own
bookkeeping, which records the interruption in the same storage, then waits for that lock
for ever: a stopped run that never stops. A trial therefore runs `deferred`: a signal is
recorded, and acted on where the block ends, or at once within an `interruptible` block
(loading a model, tokenizing, training and evaluating: computation that holds no lock of
ours). So Ctrl-C still stops a trial mid-step, and never mid-write.

The signal is acted on by the handler that was in place before the outermost `deferred`
block (KeyboardInterrupt for SIGINT, the command line's `Terminated` for SIGTERM), so a
deferred signal stops the run exactly as an immediate one would. Only the main thread can
take signals; elsewhere, and for a signal whose handler is not Python's (ignored, or the
default of ending the process), these blocks change nothing.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)

# Innermost last: (True, None) for an interruptible block, (False, notice) for a deferred one.
_blocks: list[tuple[bool, str | None]] = []
# Per signal taken over, its handler before the outermost deferred block.
_previous: dict[int, signal.Handlers | object] = {}
# Signals that came while deferred, first first; acted on once, as one.
_pending: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    interruptible, notice = _blocks[-1]
    if interruptible:
        _previous[signum](signum, frame)
        return
    if notice and not _pending:
        print(f"{signal.Signals(signum).name}: {notice}", file=sys.stderr, flush=True)
    _pending.append(signum)


def _act_on_pending() -> None:
    """Where signals act at once (no block, or an interruptible one), the first pending one
    acts now, by its handler."""
    if not _pending or (_blocks and not _blocks[-1][0]):
        return
    signum = _pending[0]
    _pending.clear()
    handler = _previous.get(signum, signal.getsignal(signum))
    if callable(handler):
        handler(signum, None)


@contextmanager
def deferred(notice: str | None = None) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait for its end (or for an `interruptible` block
    inside it) before they act; the first that comes prints `notice`, if given, to stderr."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outermost = not _blocks
    if outermost:
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if callable(handler):
                _previous[signum] = handler
                signal.signal(signum, _on_signal)
    _blocks.append((False, notice))
    try:
        yield
    except KeyboardInterrupt:
        _pending.clear()  # the run is stopping already
        raise
    finally:
        _blocks.pop()
        try:
            if outermost:
                for signum, handler in _previous.items():
                    # A handler that acted may have changed its signal's (SIGTERM: ignored
                    # once taken): that change stands.
                    if signal.getsignal(signum) is _on_signal:
                        signal.signal(signum, handler)
            _act_on_pending()  # also where the block raised an error: the user asked to stop
        finally:
            if outermost:
                _previous.clear()


@contextmanager
def interruptible() -> Iterator[None]:
    """Within a `deferred` block, a block where SIGINT and SIGTERM act at once again: one
    that came before it acts as it starts. Outside one, nothing changes."""
    if not _blocks:
        yield
        return
    _blocks.append((True, None))
    try:
        _act_on_pending()
        yield
    finally:
        _blocks.pop()
