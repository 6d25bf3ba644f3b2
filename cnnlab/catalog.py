"""What a study file can name, listed from the code that takes it: ``cnnlab models`` and ``cnnlab options``.

:func:`model_entries` reads the model registry: each builder's family, its parameter count for 10 classes
at the input it is built for by default, that input, the smallest image side it takes and its own options
with their defaults (and the values ``model.<option>`` allows, where the typed config lists them).

:func:`option_entries` reads the typed config (:class:`cnnlab.config.schema.Config`) itself: every field of a
section with its type, default, allowed range and help. The help is the field's ``description`` where it
has one, else the comment written beside (or just above) the field in ``cnnlab/config/schema.py``, so the list
cannot drift from the schema. Registry-named fields (``model.name``, ``optim.name`` ...) also list the
registered names.
"""
from __future__ import annotations

import ast
import inspect
import io
import textwrap
import tokenize
import types
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cnnlab.config.schema import Config, ConfigError, ModelConfig

PARAMS_CLASSES = 10  # parameter counts are for a 10-class head


# ----------------------------------------------------------------------------- models


def _input_shape(info, channels: int) -> tuple[int, int, int]:
    """The input a builder's defaults are meant for: its registered design size, else MNIST's 28 px for one
    channel and CIFAR's 32 px for three, never below the smallest side it takes."""
    side = info.input_size or (28 if channels == 1 else 32)
    side = max(side, info.min_input_size)
    return channels, side, side


def _parameter_count(name: str, channels: int, shape: tuple[int, int, int]) -> int:
    """Parameters of the builder's default network with a 10-class head; networks whose layer sizes follow
    the input (lazy layers) see one blank image of ``shape`` first."""
    import torch
    from torch.nn.parameter import UninitializedParameter

    from cnnlab.registry import MODELS

    build = MODELS.get(name)
    with torch.device("meta"):  # no memory, no initialisation: a VGG-16 is counted in milliseconds
        model = build(num_classes=PARAMS_CLASSES, in_channels=channels)
    if any(isinstance(p, UninitializedParameter) for p in model.parameters()):
        model = build(num_classes=PARAMS_CLASSES, in_channels=channels).eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    return sum(p.numel() for p in model.parameters())


def _choices(option: str) -> Optional[list]:
    """The values ``model.<option>`` allows when the typed config lists them (a Literal), else None."""
    field = ModelConfig.model_fields.get(option)
    found = _literal_values(field.annotation) if field is not None else None
    return found or None


def _literal_values(annotation: Any) -> list:
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [v for a in get_args(annotation) for v in _literal_values(a)]


def model_entries() -> list[dict]:
    """One entry per registered model, by family then name: name, family, parameters, input [C, H, W],
    min_side, options [{name, default, choices}]."""
    import cnnlab.models  # noqa: F401 - fills the registry
    from cnnlab.registry import MODELS

    out = []
    for name in MODELS.names():
        info = MODELS.info(name)
        signature = inspect.signature(MODELS.get(name)).parameters
        channels = signature["in_channels"].default
        channels = channels if isinstance(channels, int) else 3
        shape = _input_shape(info, channels)
        options = [{"name": k, "default": _plain(p.default), "choices": _choices(k)}
                   for k, p in MODELS.options(name).items()]
        out.append({"name": name, "family": info.family, "parameters": _parameter_count(name, channels, shape),
                    "input": list(shape), "min_side": info.min_input_size, "options": options})
    return sorted(out, key=lambda e: (e["family"], e["name"]))


def _plain(value: Any) -> Any:
    """A default as JSON shows it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def format_models(entries: list[dict]) -> str:
    """The models table, grouped by family, each model's options beneath it."""
    lines = [f"{len(entries)} models (parameters with a {PARAMS_CLASSES}-class head at the input shown; "
             "set options as model.<option>=value, e.g. model.activation=relu)"]
    family = None
    for e in entries:
        if e["family"] != family:
            family = e["family"]
            lines += ["", f"family {family} (cnnlab/models/{family}.py)"]
        shape = "×".join(map(str, e["input"]))
        lines.append(f"  {e['name']:<14} {e['parameters']:>12,} parameters   input {shape:<11} "
                     f"(sides from {e['min_side']} px)")
        shown = [f"{o['name']}={_text(o['default'])}" + (f" [{'|'.join(map(_text, o['choices']))}]"
                                                          if o["choices"] else "") for o in e["options"]]
        lines.append("      options: " + (", ".join(shown) if shown else "none"))
    return "\n".join(lines)


def _text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# ----------------------------------------------------------------------------- config fields


def sections() -> dict[str, type[BaseModel]]:
    """Every section of the config by its dotted name ("" for the top level: name, seed), nested ones too."""
    out: dict[str, type[BaseModel]] = {"": Config}
    todo = [("", Config)]
    while todo:
        prefix, model = todo.pop(0)
        for key, field in model.model_fields.items():
            inner = _section_of(field.annotation)
            if inner is not None:
                name = f"{prefix}{key}"
                out[name] = inner
                todo.append((f"{name}.", inner))
    return out


def _section_of(annotation: Any) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for a in get_args(annotation):
        found = _section_of(a)
        if found is not None:
            return found
    return None


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment beside each field in the class's source, else the comment lines just above it."""
    try:
        source = textwrap.dedent(inspect.getsource(model))
    except (OSError, TypeError):
        return {}
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = by_line.get(node.lineno)
        if text is None:  # a block of comment lines right above the field
            above, n = [], node.lineno - 1
            while n >= 1 and lines[n - 1].strip().startswith("#"):
                above.insert(0, by_line.get(n, ""))
                n -= 1
            text = " ".join(above) or None
        if text:
            out[node.target.id] = text
    return out


def type_text(annotation: Any) -> str:
    """A field's type as a study file writes it: ``int``, ``float | null``, ``one of: epoch | step``."""
    if get_origin(annotation) is Literal:
        return "one of: " + _type_text(annotation)
    return _type_text(annotation)


def _type_text(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(_text(a) for a in args)
    if origin is Annotated:
        return _type_text(args[0])
    if origin in (Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin in (list, tuple):
        inner = ", ".join(_type_text(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _range(field) -> str:
    """The bounds pydantic checks (``> 0``, ``≥ 0, ≤ 10000``), from the field's constraints."""
    marks = {"gt": ">", "ge": "≥", "lt": "<", "le": "≤", "min_length": "length ≥", "max_length": "length ≤"}
    parts = [f"{sign} {getattr(m, key)}" for m in field.metadata for key, sign in marks.items()
             if getattr(m, key, None) is not None]
    return ", ".join(parts)


def _default(field) -> Any:
    if field.default_factory is not None:
        made = field.default_factory()
        return None if isinstance(made, BaseModel) else made
    return None if field.default is PydanticUndefined else field.default


def option_entries(section: Optional[str] = None) -> list[dict]:
    """Every config field (of ``section`` and the sections inside it; all of them when None): key, type,
    default, range, help. An unknown section is a ConfigError naming the sections there are."""
    from cnnlab.config.rules import NAMED_FIELDS

    known = sections()
    wanted = [s for s in known if section in (None, "") or s == section or s.startswith(f"{section}.")]
    if section not in (None, "") and section not in known:
        raise ConfigError(f"options: unknown section {section!r}; the sections are: "
                          f"{', '.join(s for s in known if s)} (or none, for every field)")
    if section == "":
        wanted = [""]
    named = {field: registry for field, registry in NAMED_FIELDS}
    out = []
    for prefix in wanted:
        model, comments = known[prefix], _comments(known[prefix])
        for key, field in model.model_fields.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if _section_of(field.annotation) is not None:
                kind = type_text(field.annotation)
                out.append({"key": dotted, "type": kind, "default": None, "range": "",
                            "help": " ".join(filter(None, [field.description or comments.get(key),
                                                           f"(its fields: cnnlab options {dotted})"]))})
                continue
            help_text = field.description or comments.get(key, "")
            if dotted in named:
                registry = named[dotted]
                help_text = (help_text + "; " if help_text else "") + f"one of: {', '.join(registry.names())}"
            out.append({"key": dotted, "type": type_text(field.annotation), "default": _plain(_default(field)),
                        "range": _range(field), "help": help_text})
    return out


def format_options(entries: list[dict]) -> str:
    """One paragraph per field: ``key  type  default X  [range]`` then its help, indented."""
    lines = []
    for e in entries:
        head = f"{e['key']}  ({e['type']}"
        head += f"; default {_text(e['default'])}" if e["type"] != "section" else ""
        head += f"; {e['range']})" if e["range"] else ")"
        lines.append(head)
        if e["help"]:
            lines += textwrap.wrap(e["help"], width=100, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines)
