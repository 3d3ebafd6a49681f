"""A clean stop on SIGTERM: the loop finishes its step, checkpoints, and every rank exits together.

Schedulers (Slurm, Kubernetes, torchrun's elastic agent) send SIGTERM some seconds before they
kill a job. :class:`StopRequest` turns the signal into a flag; the loop adds the flag to the
step's one all-reduce, so every rank sees the request after the same step, saves, and ends.
"""
from __future__ import annotations

import signal

__all__ = ["StopRequest", "ignore_sigterm"]


class StopRequest:
    """Sets :attr:`requested` when ``signum`` (SIGTERM) arrives; a context manager that puts the
    previous handler back on exit (the caller may be a longer-lived process).

    Must be created in the main thread (Python installs signal handlers only there).
    """

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopRequest":
        self._previous = signal.signal(self.signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(self.signum, self._previous)

    def _handle(self, _signum, _frame) -> None:
        self.requested = True


def ignore_sigterm(_worker_id: int = 0) -> None:
    """``worker_init_fn`` for loader workers: they leave SIGTERM to the training process, which
    checkpoints and then ends them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
