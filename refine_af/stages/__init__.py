"""The stages of REFINE-AF and the one protocol ``refineaf train`` calls.

Every stage module offers the same four functions:

``check(config) -> None``
    Every input the stage will read, checked by content as well as by path (the seed file
    parses, the SuperNI data holds the test tasks, the TRL arguments validate), without touching
    the run directory or loading a model's weights. ``refineaf train`` runs the check of every
    planned stage before stage 1 starts, so a bad input stops the run in seconds with one line.
``key(config, run_dir, variant=None) -> str``
    A fingerprint of everything the stage's outputs depend on: its settings, the model, the seed
    and the content of its inputs. Settings that only say how far to go (a target count, a step
    count) are not in it, so raising them continues the same outputs. The key is written to
    ``RUN/<stage folder>/key`` and into ``status.json``.
``is_done(config, run_dir, variant=None) -> bool``
    The stage finished with this key, as far as the config asks, and its outputs are there.
``run(config, run_dir, variant=None, *, restart=False) -> dict``
    Do the work and return the stage's summary, after the one resume rule
    (:mod:`refine_af.batches`): outputs of the same key are continued from their last batch or
    checkpoint, outputs of another key are set aside and the stage starts, and ``restart``
    (``--restart``) sets them aside and starts whatever the key.

``config`` is the whole :class:`refine_af.train_config.TrainConfig`; ``variant`` names the
instance writer (``refine_af``, ``baseline``, ``seeds_only``) for the stage-3 steps and is None
for stages 1 and 2. :data:`STAGES` lists the stages in order, with the variants that need each;
:mod:`refine_af.pipeline` knows nothing else about them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Protocol, cast

VARIANTS = ("refine_af", "baseline", "seeds_only", "seeds_matched")


class Stage(Protocol):
    """What a stage module offers (see the module docstring)."""

    def check(self, config: Any) -> None: ...

    def key(self, config: Any, run_dir: Any, variant: str | None = None) -> str: ...

    def is_done(self, config: Any, run_dir: Any, variant: str | None = None) -> bool: ...

    def run(
        self, config: Any, run_dir: Any, variant: str | None = None, *, restart: bool = False
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StageEntry:
    """One stage: its name in messages, its module and the adapters (variants) that need it."""

    label: str
    module: str
    needed_by: tuple[str, ...]
    per_variant: bool = False  # run once per variant (stage 3) or once per run directory

    def load(self) -> Stage:
        return cast(Stage, importlib.import_module(self.module))


STAGES: tuple[StageEntry, ...] = (
    # seeds_only needs no generated instruction; only refine_af needs the RL adapter.
    StageEntry(
        "stage 1 (instructions)", "refine_af.stages.instructions", ("refine_af", "baseline")
    ),
    StageEntry("stage 2 (RL)", "refine_af.stages.rl", ("refine_af",)),
    StageEntry("stage 3 (instances)", "refine_af.stages.instances", VARIANTS, per_variant=True),
    StageEntry("stage 3 (fine-tuning)", "refine_af.stages.sft", VARIANTS, per_variant=True),
)


@dataclass(frozen=True)
class Step:
    """One stage run of ``refineaf train``: the stage, and the variant for stage 3."""

    label: str
    stage: Stage
    variant: str | None = None


def plan(variants: list[str]) -> list[Step]:
    """The steps that make the adapters of ``variants``, in order: the shared stages first, then
    every per-variant stage of one variant before the next variant."""
    shared = [
        Step(entry.label, entry.load())
        for entry in STAGES
        if not entry.per_variant and set(entry.needed_by) & set(variants)
    ]
    per_variant = [
        Step(entry.label.replace(")", f", {variant})"), entry.load(), variant)
        for variant in variants
        for entry in STAGES
        if entry.per_variant and variant in entry.needed_by
    ]
    return shared + per_variant
