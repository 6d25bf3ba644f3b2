"""The error a user can fix: a setting, file or value that cannot be run, said in one paragraph.

It lives apart from the config schema so that low layers (the run folder's I/O, the data
cache) can raise it without importing pydantic or the schema; ``cnnlab.config`` re-exports it.
The CLI turns it into exit code 2.
"""


class ConfigError(ValueError):
    """A study or sweep file (or an override) that cannot be run, with why."""
