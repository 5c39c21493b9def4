"""Stage 3a: instances for every kept instruction, written by the RL-tuned or the base model.

Two variants share every line of this stage and differ only in the model that writes:

* ``refine_af``: the base model with stage 2's LoRA adapter (``RUN/rl/adapter``) merged in;
* ``baseline``: the untuned base model (Self-Instruct on the same base model, SPEC section 1).

Both read the same instruction pool (``RUN/instructions/instructions.jsonl``), so the two
fine-tuned adapters differ only by who wrote the instances. Prompts follow Self-Instruct
(:func:`refine_af.prompts.instance_generation_prompt`): classification tasks output-first, the
others input-first; ``prompt_format: rl_policy`` instead asks stage 2's one-instance prompt
(:mod:`refine_af.instance_format`) ``completions_per_instruction`` times. Candidates pass the
instance filters (:func:`refine_af.filters.filter_task_instances`) and the decontamination
against SuperNI's test tasks (:mod:`refine_af.decontamination`): instructions that overlap a test
task are dropped before any generation, instances that overlap are dropped as ``contaminated``.

Resumability is stage 1's: ``batches.jsonl`` is an append-only log, one line per finished batch
of instructions (raw completions, every candidate and its drop reason), extended by the one batch
driver (refine_af.batches). Batch ``k`` always holds the same slice of the instruction list and
draws its randomness from ``(seed, k)``, so a resumed run equals an uninterrupted one; a kill
loses at most the batch in flight.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from refine_af.artifacts import check_adapter
from refine_af.batches import run_batches
from refine_af.config import ConfigError, fingerprint, help_field, to_dict
from refine_af.decontamination import Decontaminator, build_decontaminator, file_key
from refine_af.errors import UserError
from refine_af.filters import INSTANCE_DROP_REASONS, instance_reasons, task_reasons
from refine_af.generation import Completion, GenerationBackend, SamplingParams
from refine_af.judges import Judge, NearCopy, judge_identity, load_judge
from refine_af.prompts import (
    INPUT_FIRST_DEMONSTRATION_TEXTS,
    INSTANCE_DEMONSTRATION_TEXTS,
    INSTANCE_STOP,
    OUTPUT_FIRST_DEMONSTRATION_TEXTS,
    instance_generation_prompt,
    parse_instances,
)
from refine_af.run_dir import RunDirectory
from refine_af.stages import VARIANTS
from refine_af.storage import (
    directory_digest,
    file_digest,
    read_log,
    read_records,
    write_json_atomic,
    write_records_atomic,
)

STAGE_DIR = "instances"
# The control: the human-written seed tasks' own instances, no generated data at all.
SEEDS_ONLY = "seeds_only"
# The same control subsampled to the size of the REFINE-AF set: how good, at equal size.
SEEDS_MATCHED = "seeds_matched"
SEED_VARIANTS = (SEEDS_ONLY, SEEDS_MATCHED)
RL_ADAPTER = Path("rl") / "adapter"  # where stage 2 leaves its final adapter
INSTRUCTIONS_FILE = Path("instructions") / "instructions.jsonl"


@dataclass
class InstanceGenerationConfig:
    """Stage 3a settings (defaults: Self-Instruct's ``generate_instances.py``)."""

    max_instances_per_instruction: int = help_field(
        5, "Keep at most this many instances per instruction (Self-Instruct: 5)."
    )
    completions_per_instruction: int = help_field(
        1, "Completions sampled per instruction; each may hold several examples."
    )
    prompt_format: Literal["self_instruct", "rl_policy"] = help_field(
        "self_instruct",
        "'self_instruct': few-shot, classification output-first, others input-first; "
        "'rl_policy': stage 2's one-instance prompt (what the RL adapter was trained on).",
    )
    instructions_per_batch: int = help_field(32, "Instructions generated for in one logged batch.")
    generation_batch_size: int = help_field(64, "Sequences per forward pass (transformers).")
    max_instructions: int | None = help_field(
        None, "Use only the first N instructions (None: all); raising it later continues."
    )
    temperature: float = help_field(0.0, "Sampling temperature; 0 is greedy (Self-Instruct).")
    top_p: float = help_field(1.0, "Nucleus sampling when temperature > 0.")
    presence_penalty: float = help_field(
        1.5, "OpenAI-style presence penalty (Self-Instruct: 1.5; 0 for small models)."
    )
    max_new_tokens: int = help_field(300, "Token limit of one completion (Self-Instruct: 300).")
    use_chat_template: bool = help_field(
        True, "Wrap prompts in the model's chat template (if it has one)."
    )
    decontaminate: bool = help_field(
        True, "Drop instructions and instances that overlap the SuperNI test tasks."
    )
    superni_data: str | None = help_field(
        None,
        "SuperNI test data for decontamination (JSONL/JSONL.GZ or task directory); "
        "default: $REFINEAF_SUPERNI_DATA; none: skipped with a warning.",
    )
    decontamination_ngram: int = help_field(
        8, "Word n-gram size: sharing one n-gram with the test data is contamination."
    )
    near_copy_threshold: float | None = help_field(
        None,
        "Drop an instance whose input or output holds a demonstration shown in its prompt: "
        "ROUGE-L recall of the demonstration above this (e.g. 0.5); null: only exact copies are "
        "dropped (Self-Instruct).",
    )
    drop_non_instances: bool = help_field(
        False,
        "Drop a candidate that is not an instance of its task: talk about the task or its "
        "format ('Input: Task', 'Output: Output is ...', a placeholder), a field repeating the "
        "instruction, or no input for a task that speaks of a given one ('the given sentence') "
        "(beyond Self-Instruct; refine_af.filters).",
    )
    output_judge: float | None = help_field(
        None,
        "Drop an instance whose P(Yes) to 'does the output carry out the instruction on the "
        "input?', asked of rl.evaluator, is below this (e.g. 0.5); null: off.",
    )
    keep_best: bool = help_field(
        False,
        "Best-of-n (beyond the paper): where more of an instruction's candidates pass every "
        "filter than max_instances_per_instruction, keep those the output judge scores highest "
        "(stage 2's judge reward) instead of the first ones. Needs output_judge.",
    )

    def __post_init__(self) -> None:
        for name in (
            "max_instances_per_instruction",
            "completions_per_instruction",
            "instructions_per_batch",
            "generation_batch_size",
            "max_new_tokens",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"generate_instances.{name} must be >= 1")
        if self.max_instructions is not None and self.max_instructions < 0:
            raise ConfigError("generate_instances.max_instructions must be >= 0 (or null: all)")
        if self.temperature < 0 or not 0.0 < self.top_p <= 1.0:
            raise ConfigError("generate_instances needs temperature >= 0 and top_p in (0, 1]")
        if self.completions_per_instruction > 1 and self.temperature == 0:
            raise ConfigError(
                "generate_instances.completions_per_instruction > 1 needs temperature > 0: "
                "greedy decoding writes the same completion every time"
            )
        if self.decontamination_ngram < 2:
            raise ConfigError("generate_instances.decontamination_ngram must be >= 2")
        if self.keep_best and self.output_judge is None:
            raise ConfigError(
                "generate_instances.keep_best ranks candidates by the output judge: set "
                "generate_instances.output_judge (e.g. 0.5), or keep_best: false"
            )
        for name in ("near_copy_threshold", "output_judge"):
            value = getattr(self, name)
            if value is not None and not 0.0 < value < 1.0:
                raise ConfigError(
                    f"generate_instances.{name} is a threshold in (0, 1), or null to turn it off"
                )


# ---------------------------------------------------------------------------------------------
# Inputs and their fingerprints.


def check_variant(variant: str | None) -> str:
    if variant not in VARIANTS:
        raise UserError(f"unknown variant '{variant}': use one of {', '.join(VARIANTS)}")
    return variant


def instructions_path(run_dir: RunDirectory) -> Path:
    path = run_dir.path / INSTRUCTIONS_FILE
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: run stage 1 first (refineaf generate-instructions, or "
            "refineaf train)"
        )
    return path


def adapter_for(run_dir: RunDirectory, variant: str) -> Path | None:
    """The adapter that writes this variant's instances (None: the base model, or no model)."""
    if variant in ("baseline", *SEED_VARIANTS):
        return None
    adapter = run_dir.path / RL_ADAPTER
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(
            f"{adapter} is not a PEFT adapter: run stage 2 first (refineaf train), or use "
            "--variant baseline for instances from the untuned model"
        )
    return adapter


def load_instructions(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, record in enumerate(read_records(path, "run stage 1 again"), 1):
        try:
            records.append(
                {
                    "id": str(record["id"]),
                    "instruction": str(record["instruction"]),
                    "is_classification": bool(record.get("is_classification", False)),
                }
            )
        except KeyError as error:
            raise UserError(f"{path} record {number} has no {error.args[0]!r}") from error
    return records


def key(config: Any, run_dir: RunDirectory, variant: str | None = None) -> str:
    """What the instances depend on: settings, model, adapter, instructions, test data.

    Batch sizes of the forward pass and ``max_instructions`` are left out: the first changes no
    output, raising the second continues the same log.
    """
    variant = check_variant(variant)
    settings = to_dict(config.generate_instances)
    for name in ("generation_batch_size", "max_instructions", "superni_data"):
        settings.pop(name)
    if not settings["keep_best"]:
        settings.pop("keep_best")  # off: the same key as runs made before the setting existed
    adapter = adapter_for(run_dir, variant)
    data_key = None
    if settings["decontaminate"]:
        from refine_af.decontamination import find_superni_data

        data = find_superni_data(config.generate_instances.superni_data)
        data_key = file_key(data) if data is not None else None
    if variant in SEED_VARIANTS:
        from refine_af.seeds import seed_tasks_path

        seeds = file_digest(seed_tasks_path(config.generate_instructions.seed_tasks))
        size = matched_size(run_dir) if variant == SEEDS_MATCHED else None
        seed = config.run.seed if variant == SEEDS_MATCHED else None
        return fingerprint(variant, seeds, settings["decontaminate"], data_key, size, seed)
    judge = judge_identity(config) if settings["output_judge"] is not None else None
    return fingerprint(
        settings,
        judge,
        config.run.model,
        config.run.seed,
        variant,
        file_digest(instructions_path(run_dir)),
        directory_digest(adapter) if adapter is not None else None,
        data_key,
    )


def check(config: Any) -> None:
    """The inputs, before any stage runs: the model resolves, the seed tasks parse (the
    ``seeds_only`` control's instances), and the SuperNI data for decontamination, when set,
    holds test tasks (read with the reader the stage uses)."""
    from refine_af.compat import check_generation_support
    from refine_af.decontamination import find_superni_data, read_superni_texts
    from refine_af.models import resolve_model_path
    from refine_af.seeds import load_seed_tasks, seed_tasks_path

    stage_config: InstanceGenerationConfig = config.generate_instances
    resolve_model_path(config.run.model)
    check_generation_support(config)
    load_seed_tasks(seed_tasks_path(config.generate_instructions.seed_tasks))
    if stage_config.decontaminate:
        data = find_superni_data(stage_config.superni_data)
        if data is not None:
            read_superni_texts(data)


def stage_name(variant: str) -> str:
    return f"{STAGE_DIR}:{variant}"


def extent(config: Any, variant: str) -> int | None:
    """How far the stage goes: the instruction limit (the seed tasks are always all used)."""
    return None if variant in SEED_VARIANTS else config.generate_instances.max_instructions


def is_done(config: Any, run_dir: RunDirectory, variant: str | None = None) -> bool:
    variant = check_variant(variant)
    done = run_dir.is_done(
        stage_name(variant), key(config, run_dir, variant), extent(config, variant)
    )
    return done and (run_dir.path / STAGE_DIR / variant / "instances.jsonl").is_file()


# ---------------------------------------------------------------------------------------------
# One batch.


def _prompt_and_parser(
    tokenizer: Any, config: InstanceGenerationConfig
) -> tuple[Callable[[dict[str, Any]], str], Callable[[dict[str, Any], str], list]]:
    """How to ask for, and read back, one task's instances in the configured format."""
    if config.prompt_format == "rl_policy":
        from refine_af.instance_format import instance_prompt, parse_instance

        def ask(task: dict[str, Any]) -> str:
            return instance_prompt(tokenizer, task["instruction"], config.use_chat_template)

        def read(task: dict[str, Any], text: str) -> list[tuple[str, str, bool]]:
            parsed = parse_instance(text)
            return [] if parsed is None else [(parsed.input, parsed.output, True)]

        return ask, read

    def ask_self_instruct(task: dict[str, Any]) -> str:
        return instance_generation_prompt(
            tokenizer, task["instruction"], task["is_classification"], config.use_chat_template
        )

    def read_self_instruct(task: dict[str, Any], text: str) -> list[tuple[str, str, bool]]:
        return parse_instances(text, task["is_classification"])

    return ask_self_instruct, read_self_instruct


def demonstration_texts(config: InstanceGenerationConfig) -> dict[bool, tuple[str, ...]]:
    """The inputs and outputs each prompt shape shows (keyed by is_classification)."""
    if config.prompt_format == "rl_policy":
        from refine_af.instance_format import DEMONSTRATION_TEXTS

        return {False: DEMONSTRATION_TEXTS, True: DEMONSTRATION_TEXTS}
    return {False: INPUT_FIRST_DEMONSTRATION_TEXTS, True: OUTPUT_FIRST_DEMONSTRATION_TEXTS}


def near_copy_tests(config: InstanceGenerationConfig) -> dict[bool, NearCopy] | None:
    """The near-copy test for each prompt shape (keyed by is_classification), or None."""
    if config.near_copy_threshold is None:
        return None
    return {
        shape: NearCopy(texts, config.near_copy_threshold)
        for shape, texts in demonstration_texts(config).items()
    }


def run_batch(
    batch_number: int,
    tasks: list[dict[str, Any]],
    seed: int,
    backend: GenerationBackend,
    tokenizer: Any,
    config: InstanceGenerationConfig,
    decontaminator: Decontaminator,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Generate, parse and filter the instances of one batch of instructions.

    Each candidate goes through the per-instance filters, then (when set) the output judge,
    asked in one batch about every survivor of the batch, then the task-level filters.
    """
    import transformers

    # Both variants use the same per-batch seed: their samples are paired, not independent.
    rng = random.Random(f"{seed}:instances:{batch_number}")
    transformers.set_seed(rng.randrange(2**31))
    ask, read = _prompt_and_parser(tokenizer, config)
    k = config.completions_per_instruction
    prompts = [ask(task) for task in tasks for _ in range(k)]
    # Self-Instruct stops once one example more than needed has started.
    stops = (*INSTANCE_STOP, f"Example {config.max_instances_per_instruction + 1}")
    params = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        stop=stops,
        presence_penalty=config.presence_penalty,
    )
    completions: list[Completion] = backend.generate(prompts, params)
    if len(completions) != len(prompts):
        raise RuntimeError(f"backend returned {len(completions)} completions for {len(prompts)}")

    demonstrations = (
        INSTANCE_DEMONSTRATION_TEXTS
        if config.prompt_format == "self_instruct"
        else demonstration_texts(config)[False]
    )
    near_copies = near_copy_tests(config)
    contaminated = decontaminator.instance if decontaminator.available else None
    per_task = []
    for index, task in enumerate(tasks):
        own = completions[index * k : (index + 1) * k]
        candidates: list[tuple[str, str, bool]] = []
        sources: list[int] = []  # the completion each candidate came from
        unparsed = 0
        for number, completion in enumerate(own):
            parsed = read(task, completion.text)
            if not parsed:
                unparsed += 1
            # Only the last example of a completion cut by the token limit can be truncated.
            cut = completion.finish_reason == "length"
            candidates.extend((inp, out, cut and last) for inp, out, last in parsed)
            sources.extend([number] * len(parsed))
        near_copy = near_copies[task["is_classification"]] if near_copies else None
        reasons = instance_reasons(
            candidates,
            contaminated,
            demonstrations,
            near_copy,
            instruction=task["instruction"] if config.drop_non_instances else None,
        )
        per_task.append((task, own, unparsed, candidates, reasons, sources))

    scores: dict[tuple[int, int], float] = {}
    if judge is not None and config.output_judge is not None:
        asked = [
            (t, c)
            for t, (_, _, _, candidates, reasons, _) in enumerate(per_task)
            for c in range(len(candidates))
            if reasons[c] is None
        ]
        items = [
            (per_task[t][0]["instruction"], per_task[t][3][c][0], per_task[t][3][c][1])
            for t, c in asked
        ]
        for (t, c), score in zip(asked, judge.instance_scores(items), strict=True):
            scores[(t, c)] = score
            if score < config.output_judge:
                per_task[t][4][c] = "not_carried_out"

    results = []
    for t, (task, own, unparsed, candidates, reasons, sources) in enumerate(per_task):
        ranking = [scores.get((t, c)) for c in range(len(candidates))] if config.keep_best else None
        reasons = task_reasons(
            candidates, reasons, config.max_instances_per_instruction, sources, ranking
        )
        records = []
        for c, ((inp, out, _), reason) in enumerate(zip(candidates, reasons, strict=True)):
            record: dict[str, Any] = {"input": inp, "output": out, "reason": reason}
            if (t, c) in scores:
                record["judge"] = round(scores[(t, c)], 4)
            records.append(record)
        results.append(
            {
                "id": task["id"],
                "completions": [{"text": c.text, "finish_reason": c.finish_reason} for c in own],
                "unparsed_completions": unparsed,
                "candidates": records,
            }
        )
    return {
        "batch": batch_number,
        "instruction_ids": [task["id"] for task in tasks],
        "new_tokens": sum(c.num_tokens for c in completions),
        "tasks": results,
    }


# ---------------------------------------------------------------------------------------------
# The stage.


def kept_instances(
    batches: list[dict[str, Any]], by_id: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """The instances that passed every filter, with their instruction, in generation order."""
    records = []
    for batch in batches:
        for task in batch["tasks"]:
            instruction = by_id[task["id"]]
            kept = [c for c in task["candidates"] if c["reason"] is None]
            for number, candidate in enumerate(kept):
                records.append(
                    {
                        "id": f"{task['id']}-{number}",
                        "instruction_id": task["id"],
                        "instruction": instruction["instruction"],
                        "input": candidate["input"],
                        "output": candidate["output"],
                        "is_classification": instruction["is_classification"],
                    }
                )
    return records


def completions_running_on(tasks: list[dict[str, Any]]) -> int:
    """Completions of the one-instance prompt that went on after their output (another
    ``Output:`` line, a next ``Input:``) instead of ending: the RL adapter's way to lose
    instances to the token cap that ``keepable`` now penalises (docs/stages.md, "Running on")."""
    from refine_af.instance_format import parse_instance

    return sum(
        1
        for task in tasks
        for completion in task["completions"]
        if (parsed := parse_instance(completion["text"])) is not None and parsed.runs_on
    )


def summarize(
    batches: list[dict[str, Any]],
    variant: str,
    available: int,
    contaminated_instructions: int,
    decontaminator: Decontaminator,
    config: Any,
    adapter: Path | None,
) -> dict[str, Any]:
    tasks = [task for batch in batches for task in batch["tasks"]]
    candidates = [c for task in tasks for c in task["candidates"]]
    reasons = Counter(c["reason"] for c in candidates if c["reason"])
    kept = sum(1 for c in candidates if c["reason"] is None)
    # No filter looks at this unless the instruction speaks of given material (missing_input);
    # the RL adapter drifts to it at some seeds (docs/study.md), so the card shows it.
    kept_without_input = sum(1 for c in candidates if c["reason"] is None and not c["input"])
    with_instances = sum(1 for t in tasks if any(c["reason"] is None for c in t["candidates"]))
    return {
        "variant": variant,
        "model": config.run.model,
        "adapter": str(adapter) if adapter else None,
        "prompt_format": config.generate_instances.prompt_format,
        "instructions": {
            "available": available,
            "dropped_contaminated": contaminated_instructions,
            "processed": len(tasks),
            "with_instances": with_instances,
            "without_instances": len(tasks) - with_instances,
            "dropped_conflicting_outputs": sum(
                1
                for t in tasks
                if any(c["reason"] == "conflicting_outputs" for c in t["candidates"])
            ),
        },
        "completions": sum(len(t["completions"]) for t in tasks),
        "unparsed_completions": sum(t["unparsed_completions"] for t in tasks),
        # Only the one-instance prompt asks for a single instance (None: not counted).
        "completions_running_on": (
            completions_running_on(tasks)
            if config.generate_instances.prompt_format == "rl_policy"
            else None
        ),
        "candidates": len(candidates),
        "kept": kept,
        "kept_without_input": kept_without_input,
        "dropped": {reason: reasons.get(reason, 0) for reason in INSTANCE_DROP_REASONS},
        "batches": len(batches),
        "new_tokens": sum(b["new_tokens"] for b in batches),
        "decontamination": decontaminator.describe(),
    }


def run(
    config: Any,
    run_dir: RunDirectory,
    variant: str | None = None,
    *,
    restart: bool = False,
    backend: GenerationBackend | None = None,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Write, filter and save the instances of one variant; return the stage summary.

    ``config`` is the whole train config (``TrainConfig``). ``backend`` replaces the model-backed
    generator (tests inject failures through it). Writes ``RUN/instances/<variant>/``:
    ``batches.jsonl`` (everything generated), ``instances.jsonl`` (kept) and ``summary.json``.
    """
    from refine_af.models import load_tokenizer, resolve_model_path

    variant = check_variant(variant)
    if variant in SEED_VARIANTS:
        return seed_instances(config, run_dir, restart=restart, variant=variant)
    stage_config: InstanceGenerationConfig = config.generate_instances
    adapter = adapter_for(run_dir, variant)
    if adapter is not None:  # whole and made for this base model, before any model loads
        check_adapter(
            adapter,
            resolve_model_path(config.run.model),
            f"train stage 2 again (refineaf rl -c CONFIG run.output_dir={run_dir.path} --restart)",
        )
    instructions = load_instructions(instructions_path(run_dir))
    stage_key = key(config, run_dir, variant)
    folder = run_dir.path / STAGE_DIR / variant
    run_dir.claim(folder, stage_key, restart, "instances")

    with run_dir.stage(stage_name(variant), stage_key, extent(config, variant)) as status:
        decontaminator = build_decontaminator(
            stage_config.decontaminate,
            stage_config.superni_data,
            n=stage_config.decontamination_ngram,
        )
        clean = [t for t in instructions if not decontaminator.instruction(t["instruction"])]
        contaminated = len(instructions) - len(clean)
        if stage_config.max_instructions is not None:
            clean = clean[: stage_config.max_instructions]
        by_id = {task["id"]: task for task in instructions}

        log_path = folder / "batches.jsonl"
        batches = read_log(log_path)
        done = sum(len(b["instruction_ids"]) for b in batches)
        size = stage_config.instructions_per_batch
        progress = tqdm(
            total=len(clean),
            initial=min(done, len(clean)),
            unit="instr",
            desc=f"instances ({variant})",
            dynamic_ncols=True,
        )
        if done < len(clean):
            model_path = resolve_model_path(config.run.model)
            tokenizer = load_tokenizer(model_path, config.run.trust_remote_code)
            if backend is None:
                from refine_af.generation import make_backend

                backend = make_backend(
                    config.run.generation_backend,
                    model_path,
                    device=config.run.device,
                    dtype=config.run.dtype,
                    seed=config.run.seed,
                    batch_size=stage_config.generation_batch_size,
                    adapter=str(adapter) if adapter is not None else None,
                    trust_remote_code=config.run.trust_remote_code,
                )

        def next_batch(logged: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            """Batch ``k`` always covers the same slice, so a resumed run redoes nothing."""
            nonlocal judge
            if sum(len(b["instruction_ids"]) for b in logged) >= len(clean):
                return None
            batch_number = len(logged)
            tasks = clean[batch_number * size : (batch_number + 1) * size]
            if judge is None and stage_config.output_judge is not None:
                # The judge is the untuned evaluator for every variant: it may share the
                # baseline's model, never the RL-tuned one.
                judge = load_judge(config, reuse=backend if adapter is None else None)
            assert backend is not None
            batch = run_batch(
                batch_number,
                tasks,
                config.run.seed,
                backend,
                tokenizer,
                stage_config,
                decontaminator,
                judge,
            )
            return [batch]

        def after_batch(logged: list[dict[str, Any]]) -> None:
            status.progress()
            progress.update(len(logged[0]["instruction_ids"]))
            progress.set_postfix(kept=len(kept_instances(batches, by_id)))

        run_batches(log_path, next_batch, after_batch, records=batches)
        progress.close()

        # Only the batches inside the current limit count (a lowered max_instructions).
        wanted = {task["id"] for task in clean}
        batches = [{**b, "tasks": [t for t in b["tasks"] if t["id"] in wanted]} for b in batches]
        write_records_atomic(folder / "instances.jsonl", kept_instances(batches, by_id))
        result = summarize(
            batches, variant, len(instructions), contaminated, decontaminator, config, adapter
        )
        write_json_atomic(folder / "summary.json", result)
        status.summary.update(result)
    return result


def seeded_subset(items: list[Any], size: int, seed: int) -> list[Any]:
    """``size`` of ``items`` drawn with ``seed``, in their order (all of them if fewer)."""
    if size >= len(items):
        return list(items)
    return [items[index] for index in sorted(random.Random(seed).sample(range(len(items)), size))]


def matched_size(run_dir: RunDirectory) -> int:
    """How many instances the REFINE-AF set kept (what ``seeds_matched`` subsamples to)."""
    path = run_dir.path / STAGE_DIR / "refine_af" / "instances.jsonl"
    if not path.is_file():
        raise UserError(
            f"{path} does not exist: seeds_matched is sized to the REFINE-AF set; make it first "
            "(list refine_af before seeds_matched in pipeline.variants)"
        )
    return len(read_records(path, "run generate-instances --variant refine_af again"))


def seed_instances(
    config: Any, run_dir: RunDirectory, restart: bool = False, variant: str = SEEDS_ONLY
) -> dict[str, Any]:
    """The ``seeds_only`` control: the 175 seed tasks' own (human-written) instances, with the
    same decontamination as generated ones and nothing generated. Fine-tuning on them with the
    same settings tells what the generated data adds beyond a small human-written set.

    ``seeds_matched`` draws as many of them (``run.seed``) as the REFINE-AF set kept, so a
    comparison with it separates how good the data is from how much there is."""

    from refine_af.seeds import load_seed_tasks, seed_tasks_path

    stage_config: InstanceGenerationConfig = config.generate_instances
    seeds = load_seed_tasks(seed_tasks_path(config.generate_instructions.seed_tasks))
    stage_key = key(config, run_dir, variant)
    folder = run_dir.path / STAGE_DIR / variant
    run_dir.claim(folder, stage_key, restart, "instances")
    with run_dir.stage(stage_name(variant), stage_key) as status:
        decontaminator = build_decontaminator(
            stage_config.decontaminate,
            stage_config.superni_data,
            n=stage_config.decontamination_ngram,
        )
        records, dropped = [], Counter()
        for task in seeds:
            if decontaminator.instruction(task.instruction):
                dropped["contaminated"] += len(task.instances)
                continue
            for number, (input_text, output_text) in enumerate(task.instances):
                if decontaminator.instance(input_text, output_text):
                    dropped["contaminated"] += 1
                    continue
                records.append(
                    {
                        "id": f"{task.id}-{number}",
                        "instruction_id": task.id,
                        "instruction": task.instruction,
                        "input": input_text.strip(),
                        "output": output_text.strip(),
                        "is_classification": task.is_classification,
                    }
                )
        subsampled = 0
        if variant == SEEDS_MATCHED:
            size = matched_size(run_dir)
            if size > len(records):
                raise UserError(
                    f"the REFINE-AF set kept {size} instances but the seed tasks have only "
                    f"{len(records)}: seeds_matched cannot match it; compare with seeds_only"
                )
            subsampled = len(records) - size
            records = seeded_subset(records, size, config.run.seed)
        write_records_atomic(folder / "instances.jsonl", records)
        used = {record["instruction_id"] for record in records}
        result = {
            "variant": variant,
            "instructions": {
                "available": len(seeds),
                "dropped_contaminated": sum(
                    1 for task in seeds if decontaminator.instruction(task.instruction)
                ),
                "processed": len(seeds),
                "with_instances": len(used),
                "without_instances": len(seeds) - len(used),
            },
            "completions": 0,
            "unparsed_completions": 0,
            "candidates": sum(len(task.instances) for task in seeds),
            "kept": len(records),
            "dropped": {reason: dropped.get(reason, 0) for reason in INSTANCE_DROP_REASONS}
            | ({"subsampled_to_refine_af_size": subsampled} if variant == SEEDS_MATCHED else {}),
            "decontamination": decontaminator.describe(),
        }
        write_json_atomic(folder / "summary.json", result)
        status.summary.update(result)
    return result
