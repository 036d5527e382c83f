"""YAML recipes -> frozen `Recipe` (DESIGN.md section 7).

A recipe file is a thin override of the dataclass defaults. It may name one parent with
`defaults: other.yaml` (path relative to the file; the parent may have its own parent).
Command-line overrides are `a.b=value`, the value parsed as YAML. Every error names the
dotted key (and the file where the value came from).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from maestro_megatron.config.schema import Recipe
from maestro_megatron.config.validate import validate_recipe
from maestro_megatron.errors import UserError


class ConfigError(UserError, ValueError):
    """A recipe problem; `key` is the dotted path of the offending entry."""

    def __init__(self, key: str, message: str, source: str | None = None):
        self.key, self.message, self.source = key, message, source
        where = f" (in {source})" if source else ""
        super().__init__(f"{key}: {message}{where}")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe file and merge it over its `defaults:` parent (single inheritance)."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError("defaults", f"inheritance cycle: {chain}", str(path))
    if not path.is_file():
        raise ConfigError("defaults" if seen else "recipe", f"file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("recipe", f"invalid YAML: {exc}", str(path)) from exc
    if not isinstance(data, dict):
        raise ConfigError("recipe", "top level must be a mapping", str(path))
    parent = data.pop("defaults", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError("defaults", "must be one file name (single inheritance)", str(path))
    base = _read_yaml(path.parent / parent, (*seen, path))
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` strings (value parsed as YAML) onto a nested dict."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "override must look like key.sub=value", "command line")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(key, "empty key segment", "command line")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(key, f"cannot parse value {raw!r}: {problem}",
                              "command line") from exc
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            node[part] = child
            node = child
        node[parts[-1]] = value
    return data


def _float_or_same(text: str) -> float | str:
    """float(text) for plain decimal / exponent notation ("1e-4", "3E5"), else `text`
    unchanged ("nan", "inf" and other words stay strings, so they fail as before)."""
    if re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text.strip()):
        return float(text)
    return text


def _coerce(value: Any, tp: Any, key: str, source: str | None) -> Any:
    """Check `value` against the annotation `tp` and convert lists to tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise ConfigError(key, f"expected {_name(tp)}, got {value!r}", source)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}", source)
        return build_dataclass(tp, value, key, source)
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}", source)
        return {_coerce(k, key_type, f"{key}.{k}", source):
                _coerce(v, value_type, f"{key}.{k}", source) for k, v in value.items()}
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}", source)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(key, f"expected {len(args)} items, got {len(value)}", source)
        return tuple(_coerce(v, a, f"{key}[{i}]", source)
                     for i, (v, a) in enumerate(zip(args, value)))
    if tp is float:
        if isinstance(value, str):
            value = _float_or_same(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}", source)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}", source)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true/false, got {value!r}", source)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}", source)
        return value
    raise ConfigError(key, f"unsupported field type {tp}", source)  # schema bug


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "", source: str | None = None):
    """Build `cls` from a nested dict; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(dotted, f"unknown key (known: {known})", source)
        kwargs[key] = _coerce(value, hints[key], dotted, source)
    return cls(**kwargs)


def recipe_from_dict(data: dict[str, Any], source: str | None = None) -> Recipe:
    """Build and validate a Recipe from a plain nested dict."""
    recipe = build_dataclass(Recipe, data, "", source)
    try:
        validate_recipe(recipe)
    except ValueError as exc:
        key, _, msg = str(exc).partition(": ")
        raise ConfigError(key, msg, source) from exc
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a YAML recipe (with `defaults:` inheritance) and `a.b=c` overrides.

    An error in a key set on the command line names the override, not the file.
    """
    data = _read_yaml(Path(path))
    data = apply_overrides(data, overrides or [])
    try:
        return recipe_from_dict(data, str(path))
    except ConfigError as exc:
        for item in overrides or []:
            key = item.split("=", 1)[0].strip()
            if exc.key == key or exc.key.startswith(key + ".") or key.startswith(exc.key + "."):
                raise ConfigError(exc.key, exc.message,
                                  f"command-line override {item!r}") from None
        raise

def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) for writing the resolved recipe."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(recipe))
