"""The dot-list language of model specs: ``"latent_channels=64 encoder.width_list=[64,128]"``.

The original experiment's override strings (efficientvit's ``key=value`` entries, ``section.key`` for the
encoder and decoder, ``[a,b,c]`` for tuples) read into the fields of the frozen dataclasses of
``tessera.model.config`` and are written back from them. Every key and value is checked against the
dataclass's fields and type hints; a failure is a ``ConfigError`` naming the bad entry.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A configuration value or dot-list entry that cannot describe a network."""


_ENTRY = re.compile(r"\s*([A-Za-z_][\w.]*)\s*=\s*(\[[^\]]*\]|[^\s\[\]]+)\s*")


def tokenize(text: str) -> list[tuple[str, str]]:
    """``"a=1 b.c=[x, y]"`` -> ``[("a", "1"), ("b.c", "[x, y]")]``; spaces inside brackets are allowed."""
    entries, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _ENTRY.match(text, pos)
        if match is None:
            rest = text[pos:].split()[0] if text[pos:].split() else text[pos:]
            raise ConfigError(f"cannot parse dot-list entry {rest!r}; expected key=value or key=[a,b,...]")
        entries.append((match.group(1), match.group(2)))
        pos = match.end()
    return entries


def split_entries(text: str, cls: type, sections: tuple[str, ...]) -> tuple[dict[str, str], dict[str, dict]]:
    top: dict[str, str] = {}
    sub: dict[str, dict[str, str]] = {name: {} for name in sections}
    top_known = [f.name for f in dataclasses.fields(cls) if f.name not in sections]
    for key, raw in tokenize(text):
        section, _, name = key.rpartition(".")
        if section:
            if section not in sections:
                raise ConfigError(f"unknown section {section!r} in {key!r}; known: {sorted(sections)}")
            known = [f.name for f in dataclasses.fields(_resolve(cls, section))]
            if name not in known:
                raise ConfigError(f"unknown key {key!r}; known: {sorted(f'{section}.{k}' for k in known)}")
            target = sub[section]
        else:
            if name in sections:
                raise ConfigError(f"{key!r} is a section; set its fields, e.g. {key}.width_list=[...]")
            if name not in top_known:
                raise ConfigError(f"unknown key {key!r}; known: {sorted(top_known)}")
            target = top
        if name in target:
            raise ConfigError(f"{key!r} is given twice")
        target[name] = raw
    return top, sub


def _resolve(cls: type, name: str) -> type:
    return typing.get_type_hints(cls)[name]


def coerce_all(cls: type, entries: dict[str, str], prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {name: _coerce(f"{prefix}{name}", raw, hints[name]) for name, raw in entries.items()}


def _coerce(key: str, raw: str, hint: Any) -> Any:
    """Convert one dot-list value to the field's type (``int``, ``bool``, names, tuples, ``None``)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    errors = []
    if raw in ("None", "null", "none") and type(None) in options:
        return None
    for option in options:
        if option is type(None):
            continue
        try:
            return _coerce_one(raw, option)
        except ValueError as error:
            errors.append(str(error))
    raise ConfigError(f"{key}={raw}: {'; '.join(errors)}")


def _coerce_one(raw: str, option: Any) -> Any:
    origin = typing.get_origin(option)
    if origin is tuple:
        if not (raw.startswith("[") and raw.endswith("]")):
            raise ValueError("expected a list such as [a,b,c]")
        inner = typing.get_args(option)[0]
        items = [item.strip() for item in raw[1:-1].split(",")]
        if items == [""]:
            items = []
        return tuple(_coerce_one(item, inner) for item in items)
    if raw.startswith("["):
        raise ValueError(f"expected a single {option.__name__}, not a list")
    if option is bool:
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise ValueError("expected true or false")
    if option is int:
        try:
            return int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
    if option is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if option is str:
        return raw.strip("'\"")
    raise ValueError(f"unsupported type {option}")


def field_default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def changed_fields(config: Any, default: Any) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(config)
            if f.name not in ("encoder", "decoder") and getattr(config, f.name) != getattr(default, f.name)]


def format_entry(key: str, value: Any) -> str:
    if isinstance(value, tuple):
        return f"{key}=[{','.join(str(v) for v in value)}]"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value}"
