"""A train config file: the ``run:`` section plus one section per stage, and how it is loaded.

``refineaf train`` and every stage command (and ``refineaf score``) read one such file; each
section's dataclass lives next to the code that runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from refine_af.config import RunSection, apply_overrides, build_dataclass, read_config_file
from refine_af.pipeline import PipelineConfig
from refine_af.stages.instances import InstanceGenerationConfig
from refine_af.stages.instructions import InstructionGenerationConfig
from refine_af.stages.rl import RLConfig
from refine_af.stages.sft import SFTConfig


@dataclass
class TrainConfig:
    """Everything one run directory is made from (one YAML file)."""

    run: RunSection = field(
        default=None, metadata={"help": "Shared settings: output directory, seed, model."}
    )
    generate_instructions: InstructionGenerationConfig = field(
        default=None, metadata={"help": "Stage 1."}
    )
    rl: RLConfig = field(default=None, metadata={"help": "Stage 2: RL from automated feedback."})
    generate_instances: InstanceGenerationConfig = field(
        default=None, metadata={"help": "Stage 3a: instances."}
    )
    sft: SFTConfig = field(default=None, metadata={"help": "Stage 3b: LoRA fine-tuning."})
    pipeline: PipelineConfig = field(
        default=None, metadata={"help": "refineaf train: which adapters to produce."}
    )

    def __post_init__(self) -> None:
        # Missing sections take their defaults.
        self.run = self.run or RunSection()
        self.generate_instructions = self.generate_instructions or InstructionGenerationConfig()
        self.rl = self.rl or RLConfig()
        self.generate_instances = self.generate_instances or InstanceGenerationConfig()
        self.sft = self.sft or SFTConfig()
        self.pipeline = self.pipeline or PipelineConfig()


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a config file (or packaged name), apply ``section.key=value`` overrides, validate."""
    raw: dict[str, Any] = read_config_file(name_or_path)
    apply_overrides(raw, list(overrides))
    return build_dataclass(TrainConfig, raw)
