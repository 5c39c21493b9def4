"""TRL config building: pass-through arguments, one-line errors, and the checkpointing name that
transformers changed inside the supported range."""

from __future__ import annotations

import dataclasses

import pytest

from refine_af.config import ConfigError
from refine_af.trl_args import trainer_config


@dataclasses.dataclass
class BeforeRename:
    """A config class as transformers <= 5.17 shapes it: the old checkpointing name only."""

    output_dir: str
    gradient_checkpointing: bool = True
    logging_steps: int = 10


def test_checkpointing_setting_reaches_a_config_with_the_old_name() -> None:
    made = trainer_config(
        BeforeRename, "sft", {"output_dir": "x", "activation_checkpointing": False}, {}
    )
    assert made.gradient_checkpointing is False


def test_checkpointing_setting_reaches_the_installed_trl() -> None:
    from trl import SFTConfig

    made = trainer_config(
        SFTConfig,
        "sft",
        {"output_dir": "x", "activation_checkpointing": False, "use_cpu": True},
        {},
    )
    names = {f.name for f in dataclasses.fields(SFTConfig)}
    name = (
        "activation_checkpointing"
        if "activation_checkpointing" in names
        else "gradient_checkpointing"
    )
    assert getattr(made, name) is False


def test_unknown_and_clashing_pass_through_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"sft.trainer_args.no_such_thing is not an argument"):
        trainer_config(BeforeRename, "sft", {"output_dir": "x"}, {"no_such_thing": 1})
    with pytest.raises(ConfigError, match=r"sft.trainer_args.output_dir is set by refine_af"):
        trainer_config(BeforeRename, "sft", {"output_dir": "x"}, {"output_dir": "y"})
