"""Command-line plumbing shared by every front door (``flops-fit``, the stage commands, the example
programs): the usage error, option parsing helpers, the guard that turns bad input into one line, and the
log output (warnings of the library shown as one log line each).

Text that reaches the terminal may come from files someone else wrote (experiment ids, error messages in a
ledger), so log lines and error lines have their control characters escaped (:func:`escape_controls`):
an escape sequence in a file cannot move the cursor, rewrite the screen or set the clipboard."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

#: The format of every log line a command writes: ``WARNING flops_fit: message``.
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"
#: Log settings of a command that trains (its parser's ``set_defaults(**PROGRESS_LOGGING)``, read by
#: ``flops-fit``): a line per experiment (start, end, sweep ETA) also when stderr is no terminal; the
#: per-step lines of each run only with ``-v``.
PROGRESS_LOGGING: dict[str, Any] = {
    "log_level": logging.INFO,
    "quiet_loggers": ("flops_fit.training.callbacks",),
}
#: The logger that shows ``warnings.warn`` messages of the library on the command line.
WARNINGS_LOGGER = "flops_fit"


#: C0 and C1 control characters and DEL, except tab and newline: what a terminal may act on.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """``text`` with every control character a terminal acts on (ESC, BEL, CR, C1 codes, ...) written as
    a visible ``\\xNN`` escape; tabs and newlines stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class SafeFormatter(logging.Formatter):
    """A log formatter whose lines carry no terminal control characters (:func:`escape_controls`)."""

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


class UsageError(ValueError):
    """Bad command-line input (exit status 2)."""


def floats(text: str, what: str) -> list[float]:
    """Positive finite numbers from a comma-separated option value (``what`` names the option)."""
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise UsageError(
            f"{what} must be numbers separated by commas, e.g. 1e21,1e22; got {text!r}"
        ) from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise UsageError(f"{what} must be positive finite numbers, got {text!r}")
    return values


def guarded(prog: str, call: Callable[[], int]) -> int:
    """Run a command: bad input and unusable paths end it with status 2 and one line naming the problem
    (no traceback), Ctrl-C with 130."""
    try:
        return call()
    except (UsageError, ValueError, TypeError, OSError) as exc:
        print(f"{prog}: error: {escape_controls(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler writing to whatever ``sys.stderr`` is at the time of each line, so lines logged while
    a rich progress display holds the terminal go through its redirect and land above the bars."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always the current sys.stderr


def warnings_as_log_lines(logger_name: str = WARNINGS_LOGGER) -> None:
    """Show every ``warnings.warn`` from here on as one WARNING log line of the logger ``logger_name``:
    the message only (no file, line number or source line), each distinct message once.

    The library keeps warning through :mod:`warnings` (callers of the Python API can filter or record them);
    the commands call this so a user sees a clean line. The filters still decide what is shown.
    """
    logger = logging.getLogger(logger_name)
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        text = " ".join(str(message).split())  # one line, whatever the message's layout
        if text not in seen:
            seen.add(text)
            logger.warning("%s", text)

    warnings.showwarning = show


def configure_logging(
    level: int = logging.WARNING, *, library_level: int | None = None, quiet: Sequence[str] = ()
) -> None:
    """Log output of a command: lines of ``level`` and above on stderr (``LOG_FORMAT``), the library's own
    loggers (``flops_fit.*``) from ``library_level`` when that is lower (the demo shows its progress lines
    at INFO) except the ``quiet`` ones, which keep ``level`` (``-v`` shows them), and warnings as log
    lines (:func:`warnings_as_log_lines`).

    As :func:`logging.basicConfig`, a process whose root logger already has handlers (Hydra's, pytest's)
    keeps its handlers and levels."""
    root = logging.getLogger()
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(SafeFormatter(LOG_FORMAT))
        root.addHandler(handler)
        root.setLevel(level)
        if library_level is not None and library_level < level:
            logging.getLogger(WARNINGS_LOGGER).setLevel(library_level)
            for name in quiet:
                logging.getLogger(name).setLevel(level)
    warnings_as_log_lines()


@contextlib.contextmanager
def working(message: str) -> Iterator[None]:
    """Say that a slow step (fitting, drawing) is under way: a spinner on a terminal, else a log line."""
    if not sys.stderr.isatty():
        logging.getLogger("flops_fit").info("%s", message)
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield
