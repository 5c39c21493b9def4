"""TRL trainer arguments: what a stage sets itself, plus ``trainer_args`` passed through as is.

A stage declares the TRL settings it reads, checks or gives its own default (the step count, the
learning rate, the batch size, ...); any other argument of TRL's config class goes in the stage's
``trainer_args`` mapping and reaches TRL unchanged, so the project never re-declares TRL's
options by hand. Bad names and values become one-line config errors before any model loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from refine_af.config import ConfigError
from refine_af.errors import one_line


def trainer_config(
    trl_class: type, section: str, stage_values: Mapping[str, Any], trainer_args: Mapping[str, Any]
) -> Any:
    """``trl_class(**stage_values, **trainer_args)``; a clash, an unknown name or a value TRL
    rejects is a :class:`ConfigError` naming ``section.trainer_args.<key>``."""
    accepted = {f.name for f in dataclasses.fields(trl_class) if f.init}
    stage_values = dict(stage_values)
    if "activation_checkpointing" in stage_values and "activation_checkpointing" not in accepted:
        # transformers renamed gradient_checkpointing after 5.17; both names are in our range.
        stage_values["gradient_checkpointing"] = stage_values.pop("activation_checkpointing")
    for key in trainer_args:
        if key in stage_values:
            raise ConfigError(
                f"{section}.trainer_args.{key} is set by refine_af itself: use the '{section}' "
                f"key of that name if there is one (refineaf show-config lists them)"
            )
        if key not in accepted:
            raise ConfigError(
                f"{section}.trainer_args.{key} is not an argument of TRL's {trl_class.__name__}: "
                "check the name against TRL's documentation"
            )
    try:
        return trl_class(**stage_values, **trainer_args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{section}: {one_line(error)}") from error
