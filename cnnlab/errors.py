"""The error a user can fix: a setting, file or value that cannot be run, said in one paragraph.

It lives apart from the config schema so that low layers (the run folder's I/O, the data
cache) can raise it without importing pydantic or the schema; ``cnnlab.config.schema`` re-exports it.
The CLI turns it into exit code 2.
"""


class ConfigError(ValueError):
    """A study or sweep file (or an override) that cannot be run, with why."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception as one non-empty line for a log or a table cell: its type, then its message's first line
    (cut at ``limit`` characters) when it has one. The one such helper (warnings, tracking, predict's skips)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:limit]}" if lines else f"{type(e).__name__} (no message)"
