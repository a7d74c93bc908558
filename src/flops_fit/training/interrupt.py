"""Ctrl-C during training: stop at the next step boundary, so the checkpoint written on the way out is exact."""

from __future__ import annotations

import signal
import threading
from typing import Any


class InterruptGuard:
    """Turn the first Ctrl-C into a request to stop at the next step boundary (a second one stops at once).

    Stopping between steps keeps the model and optimiser consistent, so the checkpoint written on the way
    out is exact. Only the main thread can install signal handlers; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> InterruptGuard:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.default_int_handler
            signal.signal(signal.SIGINT, previous)
