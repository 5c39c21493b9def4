"""Run configuration: YAML files, dotted command-line overrides, strict keys.

A config is a tree of dataclasses. The YAML file names sections (``run:``, one block per stage);
``section.key=value`` overrides on the command line are applied to the raw tree before it is
built, so a misspelt override is rejected exactly like a misspelt YAML key. Every stage's config
dataclass lives next to the code that runs it; this module only composes and loads them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from refine_af.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A config value or combination of values is invalid; the message says how to fix it."""


def help_field(default: Any, help: str) -> Any:  # noqa: A002 - mirrors dataclass metadata name
    """A dataclass field with help text (shown by ``refineaf show-config``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunSection:
    """The ``run:`` section of a train config: settings every stage of one run shares."""

    output_dir: str = help_field("runs/default", "Run directory: every stage writes under it.")
    seed: int = help_field(42, "The one seed behind every random choice of the run.")
    model: str = help_field(
        "default",
        "Base model: 'default' (SmolLM2-135M-Instruct), a Hub id, a local directory or a .gguf.",
    )
    device: str = help_field("auto", "'auto' (cuda when available, else cpu), 'cpu', 'cuda', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = help_field(
        "auto", "Weights' dtype; 'auto' is bfloat16 on GPU and float32 on CPU."
    )
    trust_remote_code: bool = help_field(
        False, "Run model code from the Hub. Off unless you trust the model's repository."
    )
    generation_backend: Literal["auto", "transformers", "vllm"] = help_field(
        "auto", "'auto' uses vLLM when installed and on GPU, else transformers."
    )

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"run.seed must be >= 0, got {self.seed}")
        if not self.output_dir:
            raise ConfigError("run.output_dir is empty: give a directory for the run")


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain data, strictly.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only where YAML is ambiguous."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: unexpected value {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key} must be one of {choices}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        key_tp, value_tp = args if args else (Any, Any)
        return {
            _coerce(k, key_tp, key): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()
        }
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        # YAML 1.1 reads "1e-5" as a string; accept any number spelling.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, key)
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def build_dataclass(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and values of the wrong type."""
    where = prefix or "the config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    for key in data:
        if key not in known:
            full = f"{prefix}.{key}" if prefix else str(key)
            if key in renamed:
                new = f"{prefix}.{renamed[key]}" if prefix else renamed[key]
                raise ConfigError(f"config key '{full}' is now '{new}': rename it in your config")
            raise ConfigError(
                f"unknown config key '{full}'; keys allowed in {where}: {', '.join(sorted(known))}"
            )
    kwargs = {
        key: _coerce(value, hints[key], f"{prefix}.{key}" if prefix else key)
        for key, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}: {error}") from error


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-data form of a config dataclass (for YAML, JSON and fingerprints)."""
    return dataclasses.asdict(config)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of plain data; stages use it to tell whether their inputs changed."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# YAML files and overrides.


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` strings to a raw config tree (values are parsed as YAML scalars)."""
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"bad override {override!r}: write it as section.key=value, e.g. run.seed=1"
            )
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"bad override {override!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = value
    return raw


def packaged_config_names() -> list[str]:
    """Names of the ready configs shipped inside the package (``-c default`` etc.)."""
    folder = resources.files("refine_af") / "configs"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_config_file(name_or_path: str) -> dict[str, Any]:
    """Read a YAML config from a path, or a packaged config by name (``default``, ``paper``)."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        text = path.read_text()
    else:
        packaged = resources.files("refine_af") / "configs" / f"{name_or_path}.yaml"
        if not packaged.is_file():
            names = ", ".join(packaged_config_names())
            raise ConfigError(
                f"config '{name_or_path}' not found: give a YAML file path or one of: {names}"
            )
        text = packaged.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"config '{name_or_path}' is not valid YAML{where}") from error
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config '{name_or_path}' must be a mapping of sections")
    return raw


def dump_yaml(data: dict[str, Any], header: str | None = None) -> str:
    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
    return f"# {header}\n{text}" if header else text
