"""Command-line plumbing shared by every front door (``flops-fit``, the stage commands, the example
programs): the usage error, option parsing helpers and the guard that turns bad input into one line."""

from __future__ import annotations

import sys
from collections.abc import Callable


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
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
