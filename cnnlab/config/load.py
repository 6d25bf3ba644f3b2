"""Study files to validated configs: the schema (cnnlab.config.schema) plus the registry checks (cnnlab.config.rules).

``load_config(path, overrides)`` reads a study YAML file (or none: the defaults),
applies ``key=value`` overrides, validates the fields against the schema, then checks
registry names and combinations. Every caller that turns user input into a
:class:`~cnnlab.config.schema.Config` goes through here, so ``config.py`` stays a schema that
imports no data, model or optimizer code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from cnnlab.config import rules as checks
from cnnlab.config.schema import Config, apply_overrides, check_name, read_yaml, validate


def build_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a nested dict into a :class:`Config` (schema, names, combinations), or raise ConfigError."""
    cfg = validate(raw, source)
    checks.check_names(cfg, source)
    checks.check_config(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] = ()) -> Config:
    """A study file (None: the defaults) with ``key=value`` overrides, validated and checked."""
    raw = read_yaml(path) if path is not None else {}
    if path is not None and "name" not in raw:
        # the name becomes a folder (runs/<time>-<name>): a file name that is not plain must be replaced
        check_name(Path(path).stem, "name (not set in the file, so taken from the file name; set name: in "
                   "the study file)", str(path))
        raw["name"] = Path(path).stem
    return build_config(apply_overrides(raw, overrides), str(path or "config"))
