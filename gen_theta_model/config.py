"""Typed configuration: YAML files -> frozen dataclasses, validated on load.

Every component has one config dataclass. ``load_config(cls, path)`` reads a YAML
file and builds ``cls`` from it; ``from_mapping(cls, data, source)`` does the same
for a dict (node parameters, a checkpoint's config.yaml). Errors are
``ConfigError`` and name the file, the dotted key and the bad value, e.g.::

    config/robots/arm6.yaml: key 'control_rate_hz': expected float, got 'fast' (str)

Validation beyond types lives in each dataclass's ``__post_init__`` (raise
``ValueError`` naming the value); it is re-raised here with the file and key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration file or mapping is wrong; the message says where and why."""


def share_dir() -> Path:
    """Directory holding config/, urdf/ and launch/.

    The source tree when run from a checkout or an editable install, otherwise the
    ament share directory ``share/gen_theta`` of a colcon install.
    """
    if (PACKAGE_ROOT / "config").is_dir():
        return PACKAGE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("gen_theta"))
    except (ImportError, LookupError) as err:  # PackageNotFoundError is a LookupError
        raise ConfigError(
            "cannot find the gen_theta share directory (config/, urdf/): run from a "
            "checkout, an editable install, or a sourced colcon workspace"
        ) from err


def resolve_path(path: str | Path, base: Path | None = None) -> Path:
    """Resolve ``path``: absolute as is; relative to ``base`` if it exists there,
    else relative to the package share directory (so ``urdf/arm6.urdf`` works
    from anywhere).
    """
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if base is not None and (base / p).exists():
        return (base / p).resolve()
    if p.exists():
        return p.resolve()
    return share_dir() / p


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, bad syntax or a non-mapping is a ConfigError."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as err:
        raise ConfigError(f"{p}: cannot read: {err.strerror}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: invalid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Load ``cls`` from the YAML file at ``path``; ``overrides`` (dotted keys) win."""
    data = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return from_mapping(cls, data, source=str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``, creating mappings as needed."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def from_mapping(cls: type[T], data: Any, source: str = "<mapping>", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {_where(prefix)}expected a mapping for {cls.__name__}, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' for {cls.__name__}; "
            f"known keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, source, f"{prefix}{name}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing required key '{prefix}{missing[0]}' for {cls.__name__}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: {_where(prefix)}{err}") from err


def to_mapping(obj: Any) -> Any:
    """Dataclass (nested) -> plain dict/list/scalars, suitable for ``yaml.safe_dump``."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_mapping(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_mapping(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _where(prefix: str) -> str:
    return f"key '{prefix.rstrip('.')}': " if prefix else ""


def _convert(hint: Any, value: Any, source: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, source, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{source}: key '{key}': bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: key '{key}': expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, source, prefix=f"{key}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: key '{key}': expected a list, got {value!r}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{source}: key '{key}': expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, source, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}': expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {
            _convert(kt, k, source, key): _convert(vt, v, source, f"{key}.{k}") for k, v in value.items()
        }
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: key '{key}': expected float, got {value!r} ({type(value).__name__})")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: key '{key}': expected int, got {value!r} ({type(value).__name__})")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: key '{key}': expected bool, got {value!r} ({type(value).__name__})")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: key '{key}': expected str, got {value!r} ({type(value).__name__})")
        return value
    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{source}: key '{key}': expected a path, got {value!r}")
        return Path(value)
    return value
