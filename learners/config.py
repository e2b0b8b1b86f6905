"""Typed dataclass configs: loaded from YAML, overridden from the command line, documented once.

A config is a plain ``@dataclass`` whose fields carry a docstring (a string literal on the line after
the field, as in CleanRL/tyro). ``add_config_args`` turns every field into a ``--flag`` whose help is
that docstring; ``build_config`` layers defaults < YAML file < flags given on the command line.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass, by field name."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _scalar_type(annotation: Any) -> Any:
    """The scalar type behind ``X | None`` and friends; lists keep their element type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else str
    return annotation


def _convert(value: Any, annotation: Any, name: str) -> Any:
    if value is None:
        return None
    kind = _scalar_type(annotation)
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        (elem,) = typing.get_args(kind)[:1] or (str,)
        items = value.split(",") if isinstance(value, str) else list(value)
        converted = [_convert(v, elem, name) for v in items]
        return converted if origin is list else tuple(converted)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config field {name!r}: expected true/false, got {value!r}")
    if kind in (int, float, str, Path):
        try:
            return kind(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"config field {name!r}: cannot read {value!r} as {kind.__name__}") from err
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; a clear error names the file when it is not a mapping."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping of config fields, got {type(data).__name__}")
    return data


def config_from_dict(cls: type[C], values: dict[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict, converting types and refusing unknown keys (typos fail loudly)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(v, hints[k], k) for k, v in values.items()}
    return cls(**kwargs)


def add_config_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field-name`` flag per dataclass field, help text from the field's docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields (override the --config file)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        kind = _scalar_type(hints[f.name])
        metavar = "{true,false}" if kind is bool else f.name.upper()
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f"cfg__{f.name}",
            default=None,
            metavar=metavar,
            help=f"{docs.get(f.name, '')} (default: {default})",
        )


def build_config(cls: type[C], args: argparse.Namespace, config_path: str | Path | None = None) -> C:
    """Defaults, then the YAML file (if any), then the flags actually given."""
    values: dict[str, Any] = load_yaml(config_path) if config_path else {}
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            values[key[5:]] = value
    return config_from_dict(cls, values, source=str(config_path or "command line"))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths as strings), for manifests."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
