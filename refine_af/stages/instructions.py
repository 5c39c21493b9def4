"""Stage 1: Self-Instruct bootstrapping of instructions with the base model itself.

Each batch builds prompts of 8 in-context instructions (6 seeds, 2 machine-written once there
are some), samples numbered-list continuations, parses them, and filters every new instruction
(heuristics, then ROUGE-L similarity against the whole pool). Kept instructions get a few-shot
classification check, which decides how stage 3 writes their instances.

Resumability: ``batches.jsonl`` is an append-only log with one line per finished batch (all its
candidates, kept and dropped), extended by the one batch driver (refine_af.batches). A kill
loses at most the batch in flight; on restart the log is replayed to rebuild the pool and counts,
and every batch draws its randomness from ``(seed, batch number)``, so a resumed run makes the
same choices an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from refine_af.batches import run_batches
from refine_af.config import ConfigError, fingerprint, help_field, to_dict
from refine_af.errors import UserError
from refine_af.filters import INSTRUCTION_DROP_REASONS, instruction_drop_reason
from refine_af.generation import GenerationBackend, SamplingParams
from refine_af.judges import Judge, judge_identity, load_judge
from refine_af.prompts import (
    classification_prompt,
    instruction_prompt,
    parse_numbered_instructions,
    parse_yes_no,
)
from refine_af.run_dir import RunDirectory
from refine_af.seeds import SeedTask, load_seed_tasks, seed_tasks_path
from refine_af.similarity import SimilarityIndex
from refine_af.storage import (
    append_records,
    file_digest,
    read_log,
    read_records,
    write_json_atomic,
    write_records_atomic,
)

STAGE = "instructions"


@dataclass
class InstructionGenerationConfig:
    """Stage 1 settings (SPEC section 2 gives Self-Instruct's values)."""

    seed_tasks: str | None = help_field(
        None, "Seed task JSONL; default: $REFINEAF_SEED_TASKS, else download the pinned file."
    )
    num_instructions: int = help_field(100, "Stop once this many instructions are kept.")
    initial_instructions: str | None = help_field(
        None,
        "JSONL of instructions ('instruction' per line) that enter the pool first, through the "
        "same filters, before any is generated (e.g. to extend an existing pool).",
    )
    prompts_per_batch: int = help_field(32, "Prompts generated together in one batch.")
    generation_batch_size: int = help_field(64, "Sequences per forward pass (transformers).")
    num_seed_examples: int = help_field(6, "Seed instructions in each prompt.")
    num_machine_examples: int = help_field(2, "Machine instructions in each prompt (when any).")
    temperature: float = help_field(0.7, "Sampling temperature for new instructions.")
    top_p: float = help_field(0.5, "Nucleus sampling for new instructions.")
    presence_penalty: float = help_field(
        2.0, "OpenAI-style presence penalty while sampling instructions (Self-Instruct: 2)."
    )
    max_new_tokens: int = help_field(256, "Token limit of one completion.")
    similarity_threshold: float = help_field(
        0.7, "Drop an instruction whose ROUGE-L F with any pool instruction is above this."
    )
    use_chat_template: bool = help_field(
        True, "Wrap prompts in the model's chat template (if it has one)."
    )
    classification_check: bool = help_field(
        True, "Ask the model whether each kept instruction is a classification task."
    )
    instruction_judge: float | None = help_field(
        None,
        "Drop an instruction whose P(Yes) to 'is this an instruction for a task someone could "
        "do?', asked of rl.evaluator, is below this (e.g. 0.5); null: off (Self-Instruct's "
        "filters only).",
    )
    max_batches: int = help_field(
        500, "Give up after this many batches (a model that never produces keepable text)."
    )

    def __post_init__(self) -> None:
        if self.num_instructions < 0:
            raise ConfigError(
                f"generate_instructions.num_instructions must be >= 0, got {self.num_instructions}"
            )
        for name in ("prompts_per_batch", "generation_batch_size", "max_new_tokens", "max_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"generate_instructions.{name} must be >= 1")
        if self.num_seed_examples < 1 or self.num_machine_examples < 0:
            raise ConfigError(
                "generate_instructions needs num_seed_examples >= 1 and num_machine_examples >= 0"
            )
        if not 0.0 < self.similarity_threshold <= 1.0:
            raise ConfigError("generate_instructions.similarity_threshold must be in (0, 1]")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError("generate_instructions needs temperature >= 0 and top_p in (0, 1]")
        if self.instruction_judge is not None and not 0.0 < self.instruction_judge < 1.0:
            raise ConfigError(
                "generate_instructions.instruction_judge is a P(Yes) threshold in (0, 1), or "
                "null to turn the judge off"
            )


# ---------------------------------------------------------------------------------------------
# One batch.


def sample_examples(
    rng: random.Random,
    seeds: list[SeedTask],
    machine: list[dict[str, Any]],
    config: InstructionGenerationConfig,
) -> list[tuple[str, str]]:
    """(id, instruction) pairs for one prompt: machine-written ones when the pool has them."""
    n_machine = min(config.num_machine_examples, len(machine))
    chosen = [(m["id"], m["instruction"]) for m in rng.sample(machine, n_machine)]
    n_seed = config.num_seed_examples + config.num_machine_examples - n_machine
    chosen += [(s.id, s.instruction) for s in rng.sample(seeds, min(n_seed, len(seeds)))]
    rng.shuffle(chosen)
    return chosen


def classification_examples(seeds: list[SeedTask], count: int = 8) -> list[tuple[str, bool]]:
    """A fixed, balanced set of labelled seed tasks for the few-shot classification prompt."""
    yes = [s for s in seeds if s.is_classification][: count // 2]
    no = [s for s in seeds if not s.is_classification][: count - len(yes)]
    mixed = [x for pair in zip(no, yes, strict=False) for x in pair]
    mixed += no[len(yes) :] + yes[len(no) :]
    return [(s.instruction, s.is_classification) for s in mixed]


def screen(
    drafts: list[tuple[str, bool, dict[str, Any]]],
    pool: SimilarityIndex,
    kept_count: int,
    judge: Judge | None = None,
    threshold: float | None = None,
) -> list[dict[str, Any]]:
    """Filter ``(instruction, cut_off, provenance)`` drafts in order; kept ones join ``pool``.

    Self-Instruct's heuristics first, then (when set) the judge, asked in one batch about the
    drafts that passed them and are not already too similar to the pool, then the similarity
    filter in order, so a batch's near-duplicates keep only their first.
    """
    reasons = [instruction_drop_reason(text, cut_off) for text, cut_off, _ in drafts]
    scores: list[float | None] = [None] * len(drafts)
    if judge is not None and threshold is not None:
        asked = [
            i
            for i, (text, _, _) in enumerate(drafts)
            if reasons[i] is None and not pool.is_too_similar(text)
        ]
        answers = judge.instruction_scores([drafts[i][0] for i in asked])
        for index, score in zip(asked, answers, strict=True):
            scores[index] = score
            if score < threshold:
                reasons[index] = "not_a_task"
    candidates: list[dict[str, Any]] = []
    for (text, _, provenance), reason, score in zip(drafts, reasons, scores, strict=True):
        if reason is None and pool.is_too_similar(text):
            reason = "too_similar"
        candidate: dict[str, Any] = {"instruction": text, "reason": reason}
        if score is not None:
            candidate["judge"] = round(score, 4)
        if reason is None:
            pool.add(text)
            candidate.update(id=f"gen_{kept_count:06d}", provenance=provenance)
            kept_count += 1
        candidates.append(candidate)
    return candidates


def classify(
    candidates: list[dict[str, Any]],
    backend: GenerationBackend,
    tokenizer: Any,
    seeds: list[SeedTask],
    config: InstructionGenerationConfig,
) -> None:
    """Ask the model whether each kept instruction is a classification task (few-shot Yes/No)."""
    kept = [c for c in candidates if c["reason"] is None]
    if config.classification_check and kept:
        shots = classification_examples(seeds)
        questions = [
            classification_prompt(tokenizer, c["instruction"], shots, config.use_chat_template)
            for c in kept
        ]
        answers = backend.generate(questions, SamplingParams(max_new_tokens=3, temperature=0.0))
        for candidate, answer in zip(kept, answers, strict=True):
            candidate["is_classification"] = bool(parse_yes_no(answer.text))
    else:
        for candidate in kept:
            candidate["is_classification"] = False


def run_batch(
    batch_number: int,
    seed: int,
    backend: GenerationBackend,
    tokenizer: Any,
    seeds: list[SeedTask],
    machine: list[dict[str, Any]],
    pool: SimilarityIndex,
    config: InstructionGenerationConfig,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Generate, parse and filter one batch; kept instructions are added to ``pool``."""
    import transformers

    rng = random.Random(f"{seed}:instructions:{batch_number}")
    transformers.set_seed(rng.randrange(2**31))
    prompts, contexts = [], []
    for _ in range(config.prompts_per_batch):
        examples = sample_examples(rng, seeds, machine, config)
        texts = [text for _, text in examples]
        prompts.append(instruction_prompt(tokenizer, texts, config.use_chat_template))
        contexts.append([example_id for example_id, _ in examples])
    params = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        stop=("\n\n",),
        presence_penalty=config.presence_penalty,
    )
    completions = backend.generate(prompts, params)
    drafts = []
    for prompt_index, completion in enumerate(completions):
        items = parse_numbered_instructions(completion.text)
        for position, (text, is_last) in enumerate(items):
            provenance = {
                "batch": batch_number,
                "prompt": prompt_index,
                "position": position,
                "in_context_ids": contexts[prompt_index],
            }
            drafts.append((text, is_last and completion.finish_reason == "length", provenance))
    candidates = screen(drafts, pool, len(machine), judge, config.instruction_judge)
    classify(candidates, backend, tokenizer, seeds, config)
    return {
        "batch": batch_number,
        "prompts": len(prompts),
        "new_tokens": sum(c.num_tokens for c in completions),
        "candidates": candidates,
    }


def initial_drafts(path: Path) -> list[tuple[str, bool, dict[str, Any]]]:
    """The ``initial_instructions`` file as drafts for :func:`screen` (one line on a bad record)."""
    drafts = []
    for number, record in enumerate(read_records(path, "each line needs an 'instruction'"), 1):
        text = record.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path} record {number} has no 'instruction' string")
        drafts.append((" ".join(text.split()), False, {"source": str(path), "record": number}))
    return drafts


def initial_batch(
    path: Path,
    backend: GenerationBackend,
    tokenizer: Any,
    seeds: list[SeedTask],
    pool: SimilarityIndex,
    config: InstructionGenerationConfig,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Batch 0 when ``initial_instructions`` is set: the file's instructions, through the same
    filters and classification check as generated ones, without generating."""
    drafts = initial_drafts(path)
    candidates = screen(drafts, pool, 0, judge, config.instruction_judge)
    classify(candidates, backend, tokenizer, seeds, config)
    return {"batch": 0, "prompts": 0, "new_tokens": 0, "initial": True, "candidates": candidates}


# ---------------------------------------------------------------------------------------------
# The stage.


def key(config: Any, run_dir: RunDirectory, variant: str | None = None) -> str:
    """What the pool's content depends on: the settings that shape it, model, seed, seed tasks.

    The target count is not in it (raising it continues the pool), nor are batch sizes of the
    forward pass and the give-up limit, which change no output.
    """
    stage_config = config.generate_instructions
    settings = to_dict(stage_config)
    for name in (
        "num_instructions",
        "generation_batch_size",
        "max_batches",
        "seed_tasks",
        "initial_instructions",
    ):
        settings.pop(name)
    seeds = file_digest(seed_tasks_path(stage_config.seed_tasks))
    initial = initial_instructions_path(stage_config)
    judge = judge_identity(config) if stage_config.instruction_judge is not None else None
    return fingerprint(
        settings,
        config.run.model,
        config.run.seed,
        seeds,
        file_digest(initial) if initial is not None else None,
        judge,
    )


def initial_instructions_path(config: InstructionGenerationConfig) -> Path | None:
    if config.initial_instructions is None:
        return None
    path = Path(config.initial_instructions).expanduser()
    if not path.is_file():
        raise UserError(
            f"generate_instructions.initial_instructions {path} does not exist: give a JSONL file"
        )
    return path


def check(config: Any) -> None:
    """The inputs, before any stage runs: the model resolves, the seed tasks and the
    ``initial_instructions`` file parse."""
    from refine_af.compat import check_generation_support
    from refine_af.models import resolve_model_path

    stage_config: InstructionGenerationConfig = config.generate_instructions
    resolve_model_path(config.run.model)
    check_generation_support(config)
    load_seed_tasks(seed_tasks_path(stage_config.seed_tasks))
    initial = initial_instructions_path(stage_config)
    if initial is not None:
        initial_drafts(initial)


def is_done(config: Any, run_dir: RunDirectory, variant: str | None = None) -> bool:
    target = config.generate_instructions.num_instructions
    return (
        run_dir.is_done(STAGE, key(config, run_dir), target)
        and (run_dir.path / STAGE / "instructions.jsonl").is_file()
    )


def kept_records(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": c["id"],
            "instruction": c["instruction"],
            "is_classification": c["is_classification"],
            "provenance": c["provenance"],
        }
        for batch in batches
        for c in batch["candidates"]
        if c["reason"] is None
    ]


def summarize(batches: list[dict[str, Any]], target: int) -> dict[str, Any]:
    reasons = Counter(c["reason"] for b in batches for c in b["candidates"] if c["reason"])
    kept = sum(1 for b in batches for c in b["candidates"] if c["reason"] is None)
    return {
        "target": target,
        "kept": kept,
        "candidates": sum(len(b["candidates"]) for b in batches),
        "dropped": {reason: reasons.get(reason, 0) for reason in INSTRUCTION_DROP_REASONS},
        "classification": sum(
            1 for b in batches for c in b["candidates"] if c.get("is_classification")
        ),
        "batches": len(batches),
        "new_tokens": sum(b["new_tokens"] for b in batches),
        "from_initial_instructions": sum(
            1 for b in batches if b.get("initial") for c in b["candidates"] if c["reason"] is None
        ),
    }


def run(
    config: Any,
    run_dir: RunDirectory,
    variant: str | None = None,
    *,
    restart: bool = False,
    backend: GenerationBackend | None = None,
    tokenizer: Any = None,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Generate instructions until ``num_instructions`` are kept; return the stage summary.

    ``config`` is the whole train config (:class:`refine_af.train_config.TrainConfig`); this stage
    reads ``config.run`` and ``config.generate_instructions``. Writes into ``RUN/instructions/``:
    ``batches.jsonl`` (everything generated), ``instructions.jsonl`` (kept, with provenance) and
    ``summary.json`` (per-reason counts). ``backend``/``tokenizer`` replace the configured
    model (tests use a scripted backend to exercise parsing and filtering).
    """
    from refine_af.generation import make_backend
    from refine_af.models import load_tokenizer, resolve_model_path

    stage_config: InstructionGenerationConfig = config.generate_instructions
    seeds = load_seed_tasks(seed_tasks_path(stage_config.seed_tasks))
    # Resolve the model before any work starts, so a bad path fails at once with one line.
    model_path = resolve_model_path(config.run.model) if backend is None else None
    initial = initial_instructions_path(stage_config)
    stage_key = key(config, run_dir)
    folder = run_dir.path / STAGE
    run_dir.claim(folder, stage_key, restart, "instructions")
    target = stage_config.num_instructions

    with run_dir.stage(STAGE, stage_key, target) as status:
        log_path = folder / "batches.jsonl"
        batches = read_log(log_path)
        machine = kept_records(batches)
        pool = SimilarityIndex(stage_config.similarity_threshold)
        for text in [s.instruction for s in seeds] + [r["instruction"] for r in machine]:
            pool.add(text)
        # instructions.jsonl is a view of the log, rewritten on start and appended per batch.
        kept_path = folder / "instructions.jsonl"
        write_records_atomic(kept_path, machine)
        progress = tqdm(
            total=target,
            initial=min(len(machine), target),
            desc="kept instructions",
            unit="instr",
            dynamic_ncols=True,
        )
        if len(machine) < target and model_path is not None:
            tokenizer = load_tokenizer(model_path, config.run.trust_remote_code)
            backend = make_backend(
                config.run.generation_backend,
                model_path,
                device=config.run.device,
                dtype=config.run.dtype,
                seed=config.run.seed,
                batch_size=stage_config.generation_batch_size,
                trust_remote_code=config.run.trust_remote_code,
            )

        def next_batch(logged: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            """Batch ``len(logged)``, until ``num_instructions`` are kept."""
            nonlocal judge
            if len(machine) >= target:
                return None
            batch_number = len(logged)
            if batch_number >= stage_config.max_batches:
                raise UserError(
                    f"only {len(machine)} of {target} instructions kept after {batch_number} "
                    "batches: raise generate_instructions.max_batches or check the model's "
                    "completions in batches.jsonl"
                )
            assert backend is not None and tokenizer is not None
            if judge is None and stage_config.instruction_judge is not None:
                judge = load_judge(config, reuse=backend)
            if batch_number == 0 and initial is not None:
                return [
                    initial_batch(initial, backend, tokenizer, seeds, pool, stage_config, judge)
                ]
            return [
                run_batch(
                    batch_number,
                    config.run.seed,
                    backend,
                    tokenizer,
                    seeds,
                    machine,
                    pool,
                    stage_config,
                    judge,
                )
            ]

        def after_batch(logged: list[dict[str, Any]]) -> None:
            new = kept_records(logged)
            machine.extend(new)
            append_records(kept_path, new)
            status.progress()
            progress.update(max(0, min(len(machine), target) - progress.n))
            progress.set_postfix(batch=logged[0]["batch"], candidates=len(logged[0]["candidates"]))

        run_batches(log_path, next_batch, after_batch, records=batches)
        progress.close()

        result = summarize(batches, target)
        write_json_atomic(folder / "summary.json", result)
        status.summary.update(result)
    return result
