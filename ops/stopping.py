"""Graceful stops: SIGINT (Ctrl-C) and SIGTERM ask `run`, `demo` and `ingest` to stop at their next safe point.

The signal only sets a flag. The command looks at it between two batches
(``stop()``): it finishes the batch in hand, makes it durable (`run` and
`demo` checkpoint and publish, `ingest` commits), prints one line and exits
128 + the signal: 130 for SIGINT, 143 for SIGTERM. Nothing is raised inside a
batch, so there is no traceback and no half-done work. A wait with nothing in
hand (``wait_for()``: `ingest` blocked on its input) is cut at once. A second
signal changes nothing; kill -9 stays safe at any point (the next run goes on
from the last checkpoint).

For tests, ``RINGFENCE_SIGNAL_AT=N:SIGNAL`` (e.g. ``5:SIGINT``) makes the
process send SIGNAL at its N-th check, to its whole process group when it
leads one (as a terminal's Ctrl-C reaches every process of the job), else to
itself: a signal at a named point, not after a sleep.
"""

import os
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """A stop asked for while the command waited with nothing in hand."""


def _signal_at() -> tuple[int, int] | None:
    """(check number, signal) from RINGFENCE_SIGNAL_AT, or None."""
    spec = os.environ.get("RINGFENCE_SIGNAL_AT")
    if not spec:
        return None
    check, _, name = spec.partition(":")
    return int(check), signal.Signals[name]


class GracefulStop:
    """``with GracefulStop() as stop:`` handles SIGINT and SIGTERM until the block ends (then the old handlers)."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._waiting = False
        self._checks = 0
        self._at = _signal_at()
        self._previous: dict = {}

    def __enter__(self) -> "GracefulStop":
        self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        self.signal = signum
        if self._waiting:
            self._waiting = False
            raise Stopped

    def __call__(self) -> bool:
        """The check between two batches: has a stop been asked for?"""
        self._checks += 1
        if self._at is not None and self._checks == self._at[0]:
            os.killpg(0, self._at[1]) if os.getpgrp() == os.getpid() else os.kill(os.getpid(), self._at[1])
        return self.signal is not None

    def wait_for(self, read):
        """``read()``, a blocking wait with nothing in hand: a stop asked for before or during it raises ``Stopped``."""
        if self.signal is not None:
            raise Stopped
        self._waiting = True
        try:
            return read()
        finally:
            self._waiting = False

    @property
    def exit_code(self) -> int:
        return 128 + self.signal
