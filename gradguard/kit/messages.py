"""A framework's exception, quoted in one of gradguard's own messages or notes.

TensorFlow, Keras and JAX raise errors spread over many lines, coloured with terminal escape
codes, sometimes with a printed batch of data in them. Quoted inside a ``GradGuardError`` or a
report's notes (which go to a log), the error should be one short line; every adapter shortens
it the same way here.
"""

from __future__ import annotations

import re

__all__ = ["MAX_CHARS", "one_line"]

MAX_CHARS = 300
"""The longest quotation; a longer one is cut and ends with ``...``."""

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes (Keras colours errors)


def one_line(exc: BaseException, text: str | None = None, *, limit: int = MAX_CHARS) -> str:
    """``"Type: message"`` on one line: no colour codes, whitespace collapsed, at most
    ``limit`` characters.

    Args:
        exc: The exception quoted.
        text: Its message, if the caller trimmed it first (a framework-specific dump cut out);
            default ``str(exc)``.
        limit: The longest result.
    """
    quoted = _ANSI.sub("", f"{type(exc).__name__}: {exc if text is None else text}")
    quoted = " ".join(quoted.split())
    return quoted if len(quoted) <= limit else quoted[: limit - 3] + "..."
