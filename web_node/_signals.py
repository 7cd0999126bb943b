"""Stop and reload signals, handled from the first moment of a process.

A process that is stopped while it starts must stop as cleanly as one that
is stopped later: systemd sends SIGTERM whenever an operator stops or
restarts a unit, also while it is still activating. Python's default action
for SIGTERM kills the process on the spot (exit 143), before it has removed
its cgroups or stopped its children. So:

1. :func:`block_signals` runs as the first statement of the process
   (``web_node/__main__.py``, :func:`web_node.cli.main`): from then on a
   SIGTERM, SIGINT or SIGHUP stays *pending* in the kernel instead of acting.
2. :func:`receive_signals` runs as the first thing inside ``trio.run``: it
   installs trio's receiver and only then unblocks, so a signal that arrived
   during the imports is delivered to the receiver, never to the default
   action.
3. On leaving :func:`receive_signals` the mask is restored, i.e. the signals
   are blocked again in such a process, so a second Ctrl-C during the final
   cleanup cannot cut it short (trio re-raises an unread signal once the
   previous handler, the default action, is back).

Invariant: between :func:`block_signals` and the end of the process, a stop
signal is either pending or read from a receiver; it never kills the process.

Commands that never open a receiver (``status``, ``top``, ``plan``, the
worker) call :func:`unblock_signals` right after parsing the command line,
so that Ctrl-C works there and their own children start with a normal
signal mask (the mask is inherited across fork and exec).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Iterator

#: Every signal the node or a group child acts on.
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: The signals that mean "stop now, cleanly".
STOP = (signal.SIGTERM, signal.SIGINT)


def block_signals() -> None:
    """Hold SIGTERM, SIGINT and SIGHUP pending until a receiver takes them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


def unblock_signals() -> None:
    """Back to the normal mask, for commands that never receive signals themselves."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


@contextlib.contextmanager
def receive_signals(*signums: signal.Signals) -> Iterator[AsyncIterator[int]]:
    """trio's signal receiver for ``signums`` (the pending ones arrive first).

    Must be entered in the main thread inside ``trio.run``.
    """
    import trio  # not at import time: block_signals() runs before the heavy imports

    with trio.open_signal_receiver(*signums) as receiver:
        before = signal.pthread_sigmask(signal.SIG_UNBLOCK, signums)
        try:
            yield receiver
        finally:
            # Before trio restores the previous handlers and re-raises what is unread: blocked
            # again in a process that began with block_signals(), so nothing unread kills it.
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


__all__ = ["HANDLED", "STOP", "block_signals", "receive_signals", "unblock_signals"]
