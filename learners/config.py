"""Typed dataclass configs: loaded from YAML, overridden from the command line, documented once.

A config is a plain ``@dataclass`` whose fields carry a docstring (a string literal on the line after
the field, as in CleanRL/tyro). ``add_config_args`` turns every field into a ``--flag`` whose help is
that docstring; ``build_config`` layers defaults < YAML file < flags given on the command line, and
``config_flags`` renders a config back into the flags that rebuild it (its non-default fields).

A field whose type is itself a config dataclass is a nested section: a mapping in YAML and dotted
flags (``--agent.stage2-epochs 6``); the section starts from the field's default, so a YAML section
or a flag overrides only what it names. ``option(...)`` in a field's metadata changes how the field
appears on the command line: a positional argument, a flag of another name, a switch without a value,
a list given by repeating its flag, or a section ``inline`` (its fields read as the parent's own).
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
OPTION_KEY = "learners.config"
DEST = "cfg__"
MISSING: Any = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class Option:
    """How one field appears on the command line (see ``option``)."""

    positional: bool = False
    flag: str | None = None
    switch: bool = False
    repeat: bool = False
    inline: bool = False


def option(
    *,
    positional: bool = False,
    flag: str | None = None,
    switch: bool = False,
    repeat: bool = False,
    inline: bool = False,
) -> dict[str, Option]:
    """Field metadata: ``positional`` argument; ``flag`` name instead of ``--field-name``; ``switch``: a
    flag without a value that sets the opposite of the field's default; ``repeat``: a list given as
    ``--flag A --flag B``; ``inline``: a nested section whose fields are flags and keys of the parent."""
    return {OPTION_KEY: Option(positional, flag, switch, repeat, inline)}


def _option(f: dataclasses.Field) -> Option:
    return f.metadata.get(OPTION_KEY, Option())


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


def _optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
        annotation
    )


def _section(annotation: Any) -> type | None:
    """The config class of a nested section, or None for a plain field."""
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def mapping_value(value: Any, name: str) -> dict[str, Any]:
    """A mapping field's value: a dict (YAML file, code) or its JSON/YAML text (a command-line flag)."""
    if isinstance(value, str):
        value = yaml.safe_load(value) or {}
    if not isinstance(value, dict):
        raise ValueError(f"config field {name!r}: expected a mapping, got {value!r}")
    return dict(value)


def _convert(value: Any, annotation: Any, name: str) -> Any:
    if value is None:
        return None
    # "none" on the command line (and in config_flags' output) sets an optional field to None.
    if isinstance(value, str) and value.strip().lower() in ("none", "null") and _optional(annotation):
        return None
    kind = _scalar_type(annotation)
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        (elem,) = typing.get_args(kind)[:1] or (str,)
        items = (value.split(",") if value else []) if isinstance(value, str) else list(value)
        converted = [_convert(v, elem, name) for v in items]
        return converted if origin is list else tuple(converted)
    if kind is dict or origin is dict:
        return mapping_value(value, name)
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


def _keys(cls: type) -> set[str]:
    """The keys a config reads at its own level: its fields and its inline sections' keys."""
    hints = typing.get_type_hints(cls)
    keys = set()
    for f in dataclasses.fields(cls):
        keys.add(f.name)
        if _option(f).inline:
            keys |= _keys(hints[f.name])
    return keys


def config_from_dict(
    cls: type[C], values: dict[str, Any], source: str = "config", base: C | None = None, prefix: str = ""
) -> C:
    """Build ``cls`` from a dict (over ``base`` when given), converting types and refusing unknown keys
    (typos fail loudly). A nested section takes a mapping, laid over the section's default."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    inline = {n: _keys(hints[n]) for n, f in fields.items() if _option(f).inline}
    own: dict[str, Any] = {}
    routed: dict[str, dict[str, Any]] = {n: {} for n in inline}
    unknown = []
    for key, value in values.items():
        owner = key if key in fields else next((n for n, keys in inline.items() if key in keys), None)
        if owner is None:
            unknown.append(prefix + key)
        elif owner == key:
            own[key] = value
        else:
            routed[owner][key] = value
    if unknown:
        raise ValueError(
            f"{source}: unknown field(s) {sorted(unknown)} for {cls.__name__}; known: {sorted(_keys(cls))}"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        section = _section(hints[name])
        if section is None:
            if name in own:
                kwargs[name] = _convert(own[name], hints[name], prefix + name)
            continue
        given, extra = own.get(name), routed.get(name, {})
        if isinstance(given, section) and not extra:
            kwargs[name] = given
        elif given is not None and not isinstance(given, (dict, section)):
            raise ValueError(f"{source}: {prefix + name} must be a mapping of {section.__name__} fields")
        elif given is not None or extra:
            start = given if isinstance(given, section) else getattr(base, name) if base else _default(f)
            mapping = {**(given if isinstance(given, dict) else {}), **extra}
            start = None if start is MISSING else start
            kwargs[name] = config_from_dict(section, mapping, source, start, f"{prefix}{name}.")
    if base is not None:
        return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]
    missing = [prefix + n for n, f in fields.items() if n not in kwargs and _default(f) is MISSING]
    if missing:
        raise ValueError(f"{source}: {cls.__name__} needs {', '.join(missing)}")
    return cls(**kwargs)


def _flag(f: dataclasses.Field, path: tuple[str, ...]) -> str:
    name = (_option(f).flag or f.name).lstrip("-")
    return "--" + ".".join(p.replace("_", "-") for p in (*path, name))


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    _path: tuple[str, ...] = (),
    _reference: Any = None,
) -> None:
    """Add one ``--field-name`` flag per dataclass field, help text from the field's docstring.

    Nested sections get dotted flags (``--section.field-name``), inline ones plain flags; ``skip``
    names fields (dotted for a section's) that get no flag."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    about = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".").replace("`", "")
    title = f"{'.'.join(_path) + ': ' if _path else ''}{about} (flags override the --config file)"
    group = parser.add_argument_group(title)
    sections = []
    for f in dataclasses.fields(cls):
        name = ".".join((*_path, f.name))
        if name in skip:
            continue
        opt = _option(f)
        default = getattr(_reference, f.name) if _reference is not None else _default(f)
        if _section(hints[f.name]):
            sections.append((f, opt, default))
            continue
        kind = _scalar_type(hints[f.name])
        dest = DEST + "__".join((*_path, f.name))
        shown = "required" if default is MISSING else f"default: {default}"
        # A switch's flag is off unless given, so its field's default would only confuse ("--no-report
        # ... (default: True)"). argparse formats help with %: a docstring's "16.1%" would break --help.
        help_text = docs.get(f.name, "") if opt.switch else f"{docs.get(f.name, '')} ({shown})"
        help_text = help_text.replace("%", "%%")
        if opt.positional:
            many = typing.get_origin(kind) in (list, tuple)
            group.add_argument(dest, nargs="+" if many else None, metavar=f.name.upper(), help=help_text)
        elif opt.switch:
            const = not _default(f)
            group.add_argument(_flag(f, _path), dest=dest, action="store_const", const=const, help=help_text)
        else:
            metavar = "{true,false}" if kind is bool else f.name.upper()
            group.add_argument(
                _flag(f, _path),
                dest=dest,
                default=None,
                metavar=metavar,
                action="append" if opt.repeat else None,
                required=default is MISSING,
                help=help_text,
            )
    for f, opt, default in sections:
        path = _path if opt.inline else (*_path, f.name)
        add_config_args(parser, hints[f.name], skip, path, None if default is MISSING else default)


def build_config(cls: type[C], args: argparse.Namespace, config_path: str | Path | None = None) -> C:
    """Defaults, then the YAML file (if any), then the flags actually given."""
    values: dict[str, Any] = load_yaml(config_path) if config_path else {}
    for key, value in vars(args).items():
        if not key.startswith(DEST) or value is None:
            continue
        *sections, leaf = key[len(DEST) :].split("__")
        target = values
        for name in sections:
            target = target.setdefault(name, {})
            if not isinstance(target, dict):
                raise ValueError(f"{config_path}: {name} must be a mapping, as its --{name}.* flags are")
        target[leaf] = value
    return config_from_dict(cls, values, source=str(config_path or "command line"))


def _word(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_word(v) for v in value)
    return str(value)


def config_flags(config: Any, reference: Any = None, _path: tuple[str, ...] = ()) -> list[str]:
    """The command-line arguments that rebuild ``config`` with ``build_config``: positionals, then a
    flag per field that differs from ``reference`` (default: the class's defaults)."""
    positional, flags = _render(config, reference, _path)
    return positional + flags


def _render(config: Any, reference: Any, path: tuple[str, ...]) -> tuple[list[str], list[str]]:
    hints = typing.get_type_hints(type(config))
    positional: list[str] = []
    flags: list[str] = []
    for f in dataclasses.fields(config):
        opt, value = _option(f), getattr(config, f.name)
        default = getattr(reference, f.name) if reference is not None else _default(f)
        if _section(hints[f.name]):
            inner = _render(
                value, None if default is MISSING else default, path if opt.inline else (*path, f.name)
            )
            positional += inner[0]
            flags += inner[1]
            continue
        if default is not MISSING and value == default:
            continue
        if opt.positional:
            positional += [_word(v) for v in value] if isinstance(value, (list, tuple)) else [_word(value)]
        elif opt.switch:
            if value != (not _default(f)):
                raise ValueError(f"{_flag(f, path)} is a switch: it cannot set {value!r} over {default!r}")
            flags.append(_flag(f, path))
        elif opt.repeat:
            for item in value:
                flags += [_flag(f, path), _word(item)]
        else:
            flags += [_flag(f, path), _word(value)]
    return positional, flags


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config (paths as strings; sections as nested dicts), for manifests."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}
