"""Study files to validated configs: the schema (cnnlab.config.schema) plus the registry checks (cnnlab.config.rules).

``load_config(path, overrides)`` reads a study YAML file (or none: the defaults),
applies ``key=value`` overrides, validates the fields against the schema, then checks
registry names and combinations. Every caller that turns user input into a
:class:`~cnnlab.config.schema.Config` goes through here, so ``config.py`` stays a schema that
imports no data, model or optimizer code.
"""
from __future__ import annotations

import os
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


# the config fields that name files or folders: a relative one is relative to the file that names it
PATH_FIELDS = (("data", "root"), ("model", "weights_path"), ("model", "init_from"))


def absolute_path(value: str, folder: str | Path) -> str:
    """``value`` (``~`` expanded) as an absolute path: as it is when absolute, else taken from ``folder``."""
    p = Path(value).expanduser()
    return str(p) if p.is_absolute() else os.path.normpath(os.path.join(os.path.abspath(folder), p))


def anchor_paths(raw: dict[str, Any], folder: str | Path) -> dict[str, Any]:
    """A study mapping whose relative paths (:data:`PATH_FIELDS`: data.root, model.weights_path,
    model.init_from) are made absolute from ``folder``: the folder of the file that names them (a study or
    sweep file), or the working directory for command-line overrides. Resolved once, where the file is
    read, so every process of a sweep (spawned workers, Ray trials on other nodes, other working
    directories) reads the same folder. Values of the wrong type are left for the schema to name."""
    out = dict(raw)
    for section, key in PATH_FIELDS:
        part = out.get(section)
        if isinstance(part, dict) and isinstance(part.get(key), str) and part[key].strip():
            out[section] = {**part, key: absolute_path(part[key], folder)}
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] = (),
                anchor: bool = True) -> Config:
    """A study file (None: the defaults) with ``key=value`` overrides, validated and checked. With ``anchor``
    (not for a run's own config.yaml, which must match its checkpoint), relative paths in the file are taken
    from the file's folder and those of the overrides from the working directory (:func:`anchor_paths`)."""
    raw = read_yaml(path) if path is not None else {}
    if path is not None and anchor:
        raw = anchor_paths(raw, Path(path).parent)
    if path is not None and "name" not in raw:
        # the name becomes a folder (runs/<time>-<name>): a file name that is not plain must be replaced
        check_name(Path(path).stem, "name (not set in the file, so taken from the file name; set name: in "
                   "the study file)", str(path))
        raw["name"] = Path(path).stem
    raw = apply_overrides(raw, overrides)
    return build_config(anchor_paths(raw, os.getcwd()) if anchor else raw, str(path or "config"))
