"""Config loading: packaged configs, dotted overrides, strict keys and types."""

from __future__ import annotations

from pathlib import Path

import pytest

from refine_af.config import ConfigError, apply_overrides, packaged_config_names
from refine_af.train_config import load_config


def test_packaged_configs_load_and_start_with_their_command() -> None:
    from importlib import resources

    assert {"default", "paper"} <= set(packaged_config_names())
    for name in packaged_config_names():
        config = load_config(name)
        assert config.run.output_dir
        first_line = (resources.files("refine_af") / "configs" / f"{name}.yaml").read_text()
        assert first_line.startswith("# refineaf ")


def test_overrides_set_nested_values_with_yaml_types() -> None:
    config = load_config(
        "default",
        ["run.seed=7", "generate_instructions.temperature=1e-1", "run.model=some/model"],
    )
    assert config.run.seed == 7
    assert config.generate_instructions.temperature == pytest.approx(0.1)
    assert config.run.model == "some/model"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.sed=1", "unknown config key 'run.sed'"),
        ("nosuchsection.x=1", "unknown config key 'nosuchsection'"),
        ("run.seed=abc", "run.seed must be an integer"),
        ("run.dtype=float8", "run.dtype must be one of"),
        ("generate_instructions.num_instructions=-1", "num_instructions must be >= 0"),
        ("generate_instructions.use_chat_template=maybe", "must be true or false"),
        ("run.seed", "write it as section.key=value"),
        ("run.seed.x=1", "'seed' is a value, not a section"),
    ],
)
def test_bad_overrides_say_what_to_fix(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config("default", [override])


def test_unknown_key_in_file_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  seed: 1\n  colour: blue\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'run\.colour'"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(broken))


def test_missing_sections_take_defaults(tmp_path: Path) -> None:
    minimal = tmp_path / "minimal.yaml"
    minimal.write_text("run:\n  seed: 3\n")
    config = load_config(str(minimal))
    assert config.run.seed == 3
    assert config.generate_instructions.similarity_threshold == 0.7


def test_apply_overrides_creates_sections() -> None:
    raw = apply_overrides({}, ["a.b.c=1", "a.d=[1, 2]", "e=text"])
    assert raw == {"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "text"}
