"""``refineaf eval``: evaluate a base model and any number of adapters on SuperNI, then report.

Each row of the config (vanilla, seeds_only, baseline, REFINE-AF, ...) is the base model with
or without a PEFT adapter, or with one adapter per training run (seed). Every run goes through
lm-eval's Python API (``simple_evaluate``) on the ``refineaf_superni_<task>`` tasks, one chunk
of tasks (``tasks_per_chunk``) per call with one loaded model, and appends each finished chunk
as one line to its ``chunks.jsonl``. So a killed eval loses at most the chunk in flight, and
running the same command again resumes there; nothing is evaluated twice. Layout::

    OUTPUT/eval_config.json             the config (written once the inputs are checked)
    OUTPUT/<row>/key                    the key the folder's outputs were made with
    OUTPUT/<row>/chunks.jsonl           finished chunks (per-instance records), append-only
    OUTPUT/<row>/samples.jsonl          every instance, official task order (from the log)
    OUTPUT/<row>/run.json               key, model args, timing, versions
    OUTPUT/<row>/lm_eval_results.json   lm-eval's own per-task numbers
    OUTPUT/<row>/run<i>/...             the same per run, for a row with several adapters
    OUTPUT/report.md, report.json, *.png

The one resume rule of every command (refine_af.batches): a run folder made with other settings,
data, adapter weights or package versions (its key, in ``<folder>/key``, differs) is set aside as
``<folder>.replaced-<key>``, never deleted, and the run starts afresh; ``--restart`` does the same
for every run. Adding a row or a task only evaluates what is new.

Multi-GPU: ``backend: vllm`` runs lm-eval's vLLM model (``tensor_parallel_size``,
``data_parallel_size``); ``hf``/``refineaf-hf`` split the instances over processes started with
``accelerate launch --multi_gpu --num_processes N -m refine_af.evaluation eval -c CONFIG``
(lm-eval's HFLM takes its rank and world size from accelerate; rank 0 gathers and writes).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from refine_af.batches import Output, run_batches
from refine_af.config import fingerprint, to_dict
from refine_af.errors import UserError
from refine_af.evaluation.config import (
    VLLM_LORA_RANKS,
    EvalConfig,
    RowConfig,
    find_eval_config,
    load_eval_config,
)
from refine_af.evaluation.data import (
    TASK_NAMES,
    check_tasks_available,
    load_references,
    load_task,
)
from refine_af.evaluation.superni_tasks import TEST_TASKS
from refine_af.storage import (
    read_json,
    read_log,
    write_json_atomic,
    write_records_atomic,
    write_text_atomic,
)

__all__ = [
    "EvalConfig",
    "RowConfig",
    "check_inputs",
    "evaluate_row",
    "evaluate_run",
    "find_eval_config",
    "load_eval_config",
    "model_args",
    "run_eval",
]

log = logging.getLogger(__name__)

CHUNK_LOG = "chunks.jsonl"
SAMPLES = "samples.jsonl"
RUN_META = "run.json"
LM_RESULTS = "lm_eval_results.json"
DEFAULT_MAX_GEN_TOKS = 128  # the tasks' own cap (_default_template_yaml)
_INSTANCES = {name: count for name, _, count in TEST_TASKS}


def is_main_process() -> bool:
    """False in the other processes of ``accelerate launch`` (they evaluate, rank 0 writes)."""
    return int(os.environ.get("RANK", "0")) == 0


# ---------------------------------------------------------------------------------------------
# Inputs, checked before anything is written or loaded.


def adapter_command(path: Path, model: str) -> str | None:
    """The command that makes an adapter at a ``RUN/sft/<variant>/adapter`` path, if it is one."""
    parts = path.parts
    if len(parts) < 3 or parts[-1] != "adapter" or parts[-3] != "sft":
        return None
    variant = parts[-2]
    run_dir = Path(*parts[:-3]) if len(parts) > 3 else Path(".")
    config = "paper" if run_dir.name.startswith("paper") else "default"
    extra = "" if run_dir == Path("runs") / config else f" run.output_dir={run_dir}"
    if model != "default":
        extra += f" run.model={model}"
    if variant == "seeds_only" and config == "paper":  # not among the paper config's variants
        return f"refineaf train -c {config}{extra} 'pipeline.variants=[seeds_only]'"
    if variant in ("baseline", "refine_af", "seeds_only", "seeds_matched"):
        return f"refineaf train -c {config}{extra}"
    return None


def _adapter_fix(path: Path, model: str) -> str:
    command = adapter_command(path, model)
    fix = f"make it with `{command}`" if command else "train it first (refineaf train)"
    return f"{fix}, or remove the row from the eval config"


def check_adapters(config: EvalConfig, model_path: str | None = None) -> None:
    """Every adapter must exist before anything runs (one line naming the row and the fix);
    with ``model_path``, its files must also be whole and fit that base model
    (:func:`refine_af.artifacts.check_adapter`), so a broken adapter fails its row before any
    row starts."""
    from refine_af.artifacts import check_adapter

    for row in config.rows:
        for adapter in row.adapters():
            if adapter is None:
                continue
            path = Path(adapter).expanduser()
            fix = _adapter_fix(path, config.model)
            if not (path / "adapter_config.json").is_file():
                what = "does not exist" if not path.exists() else "has no adapter_config.json"
                raise UserError(f"row '{row.name}': adapter {path} {what}: {fix}")
            if model_path is not None:
                try:
                    check_adapter(path, model_path, fix)
                except UserError as error:
                    raise UserError(f"row '{row.name}': {error}") from error


def vllm_lora_rank(adapter: str) -> int:
    """``max_lora_rank`` for vLLM: the adapter's largest rank, rounded up to a rank vLLM takes."""
    path = Path(adapter).expanduser() / "adapter_config.json"
    settings = read_json(path, "it must be the adapter_config.json that PEFT wrote") or {}
    if settings.get("modules_to_save"):
        raise UserError(
            f"adapter {path.parent} also trains whole modules ({settings['modules_to_save']}), "
            "which vLLM's LoRA cannot load: use backend: refineaf-hf for this row"
        )
    rank = max(
        [int(settings.get("r", 8)), *map(int, (settings.get("rank_pattern") or {}).values())]
    )
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise UserError(f"adapter {path.parent} has LoRA rank {rank}; vLLM takes at most 512")


def check_backend(config: EvalConfig) -> None:
    """vLLM needs the package and a CUDA GPU; say so at start, in one line."""
    if config.backend != "vllm":
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError(
            "backend vllm starts its own replicas (data_parallel_size, tensor_parallel_size): "
            "run it as one process, without accelerate launch or torchrun"
        )
    if importlib.util.find_spec("vllm") is None:
        raise UserError(
            "backend vllm needs vLLM, which is not installed: pip install 'refine_af[vllm]' on "
            "a CUDA machine, or use backend: refineaf-hf"
        )
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "backend vllm needs a CUDA GPU and none is visible: use backend: refineaf-hf"
        )
    if config.data_parallel_size > 1 and importlib.util.find_spec("ray") is None:
        raise UserError(
            "data_parallel_size > 1 with vllm runs replicas as Ray actors: pip install ray, or "
            "set data_parallel_size: 1"
        )
    for row in config.rows:
        for adapter in row.adapters():
            if adapter is not None:
                vllm_lora_rank(adapter)


def check_inputs(config: EvalConfig) -> str:
    """Check adapters, backend, data, references and model; return the base model's path.

    Every task's instances are loaded (downloaded if need be) and checked against the official
    ids here, so a bad input stops the command before any model is loaded or file written.
    """
    from refine_af.models import resolve_model_path

    check_adapters(config)
    check_backend(config)
    if config.backend != "vllm":
        check_processes()
    settings = config.data_settings()
    check_tasks_available(config.task_names(), settings)
    load_references(settings)
    for task in config.task_names():
        load_task(task, settings)
    model_path = resolve_model_path(config.model)
    check_adapters(config, model_path)
    return model_path


# ---------------------------------------------------------------------------------------------
# lm-eval model arguments.


def _vllm_dtype(dtype: str) -> str:
    if dtype != "auto":
        return dtype
    import torch

    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bfloat16" if bf16 else "float16"


def model_args(config: EvalConfig, adapter: str | None, model_path: str) -> dict[str, Any]:
    """lm-eval ``model_args`` of one run (the base model, with ``adapter`` if given)."""
    if config.backend == "vllm":
        max_gen_toks = config.max_gen_toks or DEFAULT_MAX_GEN_TOKS
        args: dict[str, Any] = {
            "pretrained": model_path,
            "dtype": _vllm_dtype(config.dtype),
            "seed": config.seed,
            "tensor_parallel_size": config.tensor_parallel_size,
            "data_parallel_size": config.data_parallel_size,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "max_gen_toks": max_gen_toks,
            "trust_remote_code": config.trust_remote_code,
        }
        if config.max_input_tokens:
            # lm-eval's vLLM model cuts prompts longer than max_model_len - max_gen_toks; the
            # middle cut keeps the definition at the start and the "Output:" cue at the end.
            args["max_model_len"] = config.max_input_tokens + max_gen_toks
            args["truncation_side"] = "middle"
        if adapter:
            args["lora_local_path"] = str(Path(adapter).expanduser().resolve())
            args["max_lora_rank"] = vllm_lora_rank(adapter)
        return args

    from refine_af.models import choose_placement

    placement = choose_placement(config.device, config.dtype)
    args = {
        "pretrained": model_path,
        "device": placement.device,
        "dtype": str(placement.dtype).removeprefix("torch."),
        "trust_remote_code": config.trust_remote_code,
    }
    if adapter:
        args["peft"] = str(Path(adapter).expanduser())
    if config.backend == "refineaf-hf":
        args["max_input_tokens"] = config.max_input_tokens
        args["token_budget"] = config.token_budget
        if config.threads:
            args["threads"] = config.threads
        if not config.prefix_cache:  # a speed setting: on (the default) leaves the key as it was
            args["prefix_cache"] = False
    return args


def _adapter_stamp(adapter: str | None) -> list[tuple[str, int, int]]:
    """Names, sizes and mtimes of an adapter's files: a retrained adapter is a new run."""
    if adapter is None:
        return []
    folder = Path(adapter).expanduser()
    return [
        (p.name, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if p.is_file()
    ]


def run_key(config: EvalConfig, adapter: str | None, args: dict[str, Any]) -> str:
    """What a run's results depend on. Not the task list: chunks are kept per task, so adding a
    task evaluates only that task."""
    from refine_af.run_dir import package_versions

    settings = to_dict(config)
    for key in ("rows", "tasks", "output_dir", "compare", "bootstrap_samples", "seed"):
        settings.pop(key)
    settings.pop("prefix_cache")  # speed only: model_args names it when it is off
    # Package versions too: a new refine_af / lm-eval / transformers re-runs the row.
    return fingerprint(settings, adapter, _adapter_stamp(adapter), args, package_versions())


# ---------------------------------------------------------------------------------------------
# lm-eval calls.


@contextmanager
def _lean_lm_eval_calls() -> Iterator[None]:
    """Run ``simple_evaluate`` once per chunk without its per-call probes and context bar.

    After every call, lm-eval runs ``git describe --always`` in the working directory (outside
    a git checkout git prints "fatal: not a git repository" to the terminal) and collects
    torch's environment report (seconds of subprocesses); before it, it draws a bar for building
    each task's prompts, which leaves a finished line per chunk under ours. Once per chunk
    that is noise and minutes, and neither probe lands in our outputs (run.json records package
    versions). Only these metadata helpers and that bar are replaced, and only for the duration
    of our calls: errors of the evaluation itself are untouched.
    """
    import functools

    import lm_eval.api.task as task_module
    import lm_eval.evaluator as evaluator

    patches: list[tuple[Any, str, Any]] = [
        (evaluator, "get_git_commit_hash", _quiet_git_hash),
        (evaluator, "add_env_info", _no_env_info),
    ]
    if hasattr(task_module, "tqdm"):
        patches.append((task_module, "tqdm", functools.partial(task_module.tqdm, disable=True)))
    # A later lm-eval that moved one of them simply runs it as it is.
    patches = [(module, name, value) for module, name, value in patches if hasattr(module, name)]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _no_env_info(storage: dict[str, Any]) -> None:
    """lm-eval's environment report, skipped (see ``_lean_lm_eval_calls``)."""


def _quiet_git_hash() -> str | None:
    try:
        done = subprocess.run(
            ["git", "describe", "--always"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def create_lm(config: EvalConfig, args: dict[str, Any]) -> Any:
    """The lm-eval model object of one run, loaded once and reused for all its chunks."""
    import lm_eval.api.registry as registry

    import refine_af.evaluation.lm  # noqa: F401 - registers the refineaf-hf model

    try:
        model_class = registry.get_model(config.backend)
    except ImportError as error:  # vllm (or ray) missing although the preflight passed
        raise UserError(f"lm-eval cannot load its {config.backend} model: {error}") from error
    # vLLM schedules its own batches; lm-eval's manual batching would only shrink them.
    batch_size: int | str = "auto" if config.backend == "vllm" else config.batch_size
    return model_class.create_from_arg_obj(
        args, {"batch_size": batch_size, "max_batch_size": None, "device": None}
    )


def check_processes(lm: Any | None = None) -> None:
    """Under ``accelerate launch``, every process must get its share of the instances.

    lm-eval's HFLM splits the work only with more than one GPU; otherwise each process would
    evaluate everything and the processes would write the same files. Checked before the model
    loads (GPU count) and after (the world size the model took).
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return
    import torch

    gpus = torch.cuda.device_count()
    if gpus < 2 or (lm is not None and getattr(lm, "world_size", 1) != launched):
        raise UserError(
            f"{launched} processes were started, but lm-eval splits the instances only when "
            f"each process has a GPU of its own ({gpus} visible): start at most one process "
            "per GPU, or a single process"
        )


def extract_samples(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-instance records from lm-eval's logged samples (official task and instance order).

    Under data parallelism lm-eval gathers each rank's samples one rank after the other;
    sorting by ``doc_id`` restores the instance order of a single process.
    """
    rows = []
    for samples in result.get("samples", {}).values():
        for sample in samples:
            doc = sample["doc"]
            prompt = sample["arguments"][0][0] if sample.get("arguments") else ""
            record = {
                "task": doc["task_name"],
                "category": doc["category"],
                "id": doc["id"],
                "prompt": prompt,
                "prediction": sample["filtered_resps"][0],
                "references": doc["references"],
                "rougeL": float(sample["rougeL"]),
                "exact_match": float(sample["exact_match"]),
            }
            rows.append((int(sample.get("doc_id", 0)), record))
    order = {task: i for i, task in enumerate(TASK_NAMES)}
    rows.sort(key=lambda pair: (order[pair[1]["task"]], pair[0]))
    return [record for _, record in rows]


def _instances(config: EvalConfig, task: str) -> int:
    count = _INSTANCES[task]
    return min(count, config.limit) if config.limit else count


# ---------------------------------------------------------------------------------------------
# One run: chunks, resume, outputs.


def _done_chunks(folder: Path, key: str, restart: bool, main: bool) -> dict[str, dict[str, Any]]:
    """Finished chunks of this run by task, after the one resume rule (refine_af.batches): a
    folder of the same key is continued; one of another key, or any with ``restart``, is set
    aside (``<folder>.replaced-<key>``, never deleted) and the run starts afresh. Only the main
    process moves folders; the others reach the same answer."""
    output = Output(folder)
    if main:
        entries = read_log(folder / CHUNK_LOG)
        keys = {entry.get("key") for entry in entries}
        if output.stored_key() is None and len(keys) == 1 and None not in keys:
            # A folder from before the key file: its chunks carry their key.
            write_text_atomic(output.key_file, f"{keys.pop()}\n")
        output.claim(key, restart, "eval outputs")
    elif restart or output.stored_key() != key:
        return {}
    done: dict[str, dict[str, Any]] = {}
    for entry in read_log(folder / CHUNK_LOG):
        for task in entry["tasks"]:
            done.setdefault(task, entry)  # the first finished copy wins (there is only one)
    return done


def _evaluate_chunks(
    config: EvalConfig,
    args: dict[str, Any],
    key: str,
    folder: Path,
    pending: list[str],
    done_instances: int,
    label: str,
) -> None:
    """Evaluate ``pending`` tasks chunk by chunk with one model, appending each chunk's records."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from tqdm import tqdm

    from refine_af.evaluation.tasks import lm_eval_task_name, tasks_dir

    main = is_main_process()
    settings = config.data_settings()
    metadata = {
        k: v
        for k, v in (("superni_data", settings.data), ("superni_references", settings.references))
        if v
    }
    lm = create_lm(config, args)
    try:
        check_processes(lm)
        manager = TaskManager(
            include_path=str(tasks_dir()), include_defaults=False, metadata=metadata
        )
        total = done_instances + sum(_instances(config, t) for t in pending)
        bar = tqdm(total=total, initial=done_instances, unit="inst", desc=label, disable=not main)
        size = config.tasks_per_chunk
        chunks = [pending[start : start + size] for start in range(0, len(pending), size)]

        def next_chunk(logged: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            """The next chunk's log line ([] in the processes that leave writing to rank 0)."""
            if not chunks:
                return None
            chunk = chunks.pop(0)
            more = f" +{len(chunk) - 1}" if len(chunk) > 1 else ""
            bar.set_postfix_str(chunk[0] + more)
            started = time.time()
            with _lean_lm_eval_calls():
                result = simple_evaluate(
                    model=lm,
                    tasks=[lm_eval_task_name(t, config.prompt) for t in chunk],
                    limit=config.limit,
                    task_manager=manager,
                    log_samples=True,
                    bootstrap_iters=0,  # intervals come from the report's bootstraps
                    apply_chat_template=config.apply_chat_template,
                    gen_kwargs={"max_gen_toks": config.max_gen_toks}
                    if config.max_gen_toks
                    else None,
                )
            if result is None:
                return []  # another process of accelerate launch: rank 0 gathers and writes
            records = extract_samples(result)
            missing = [t for t in chunk if not any(r["task"] == t for r in records)]
            if missing:
                raise UserError(f"{label}: lm-eval produced no samples for {', '.join(missing)}")
            names = [lm_eval_task_name(t, config.prompt) for t in chunk]
            entry = {
                "key": key,
                "tasks": chunk,
                "seconds": round(time.time() - started, 2),
                "lm_eval": {
                    "results": {n: result["results"].get(n) for n in names},
                    "n-samples": {n: result.get("n-samples", {}).get(n) for n in names},
                },
                "records": records,
            }
            # One line per chunk: a kill mid-write leaves a torn last line, which the next
            # read cuts off -- never half a chunk that looks finished.
            return [entry]

        run_batches(
            folder / CHUNK_LOG,
            next_chunk,
            lambda batch: bar.update(sum(len(entry["records"]) for entry in batch)),
            records=[],
        )
        bar.close()
    finally:
        # Free the model before the next run loads its own (GPU memory above all); lm-eval's
        # model objects hold reference cycles, so dropping the name is not enough.
        lm = None
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def evaluate_run(
    config: EvalConfig,
    adapter: str | None,
    model_path: str,
    folder: Path,
    restart: bool = False,
    label: str = "eval",
) -> list[dict[str, Any]] | None:
    """Evaluate one run (the base model with ``adapter`` or none) into ``folder``, resuming.

    Returns its per-instance records in official order; None in the non-main processes of
    ``accelerate launch``. ``restart`` sets an existing folder aside and starts afresh.
    """
    args = model_args(config, adapter, model_path)
    key = run_key(config, adapter, args)
    main = is_main_process()
    done = _done_chunks(folder, key, restart, main)
    tasks = config.task_names()
    pending = [t for t in tasks if t not in done]
    if pending:
        done_instances = sum(_instances(config, t) for t in tasks if t in done)
        _evaluate_chunks(config, args, key, folder, pending, done_instances, label)
    if not main:
        return None
    return _write_run_outputs(config, adapter, args, key, folder, tasks)


def _write_run_outputs(
    config: EvalConfig,
    adapter: str | None,
    args: dict[str, Any],
    key: str,
    folder: Path,
    tasks: list[str],
) -> list[dict[str, Any]]:
    """samples.jsonl, lm_eval_results.json and run.json, all from the chunk log."""
    from refine_af.run_dir import package_versions

    by_task: dict[str, dict[str, Any]] = {}
    for entry in read_log(folder / CHUNK_LOG):
        if entry.get("key") == key:
            for task in entry["tasks"]:
                by_task.setdefault(task, entry)
    missing = [t for t in tasks if t not in by_task]
    if missing:  # only if the log was changed under us
        raise UserError(f"{folder / CHUNK_LOG} lacks {', '.join(missing)}: run the eval again")
    records = [r for t in tasks for r in by_task[t]["records"] if r["task"] == t]
    entries = list({id(e): e for e in (by_task[t] for t in tasks)}.values())
    results: dict[str, Any] = {}
    samples: dict[str, Any] = {}
    for entry in entries:
        results.update(entry["lm_eval"]["results"])
        samples.update(entry["lm_eval"]["n-samples"])
    seconds = sum(entry["seconds"] for entry in entries)
    write_records_atomic(folder / SAMPLES, records)
    write_json_atomic(
        folder / LM_RESULTS,
        {"model": config.backend, "model_args": args, "results": results, "n-samples": samples},
    )
    write_json_atomic(
        folder / RUN_META,
        {
            "key": key,
            "adapter": adapter,
            "model_args": args,
            "tasks": len(tasks),
            "instances": len(records),
            "seconds": round(seconds, 1),
            "instances_per_second": round(len(records) / max(seconds, 1e-9), 3),
            "versions": package_versions(),
        },
    )
    return records


def evaluate_row(
    config: EvalConfig, row: RowConfig, model_path: str, output_dir: Path, restart: bool = False
) -> list[list[dict[str, Any]]] | None:
    """Every run of a row; a list of per-instance record lists (None outside rank 0)."""
    if row.apply_chat_template is not None:  # the row's own prompt format (part of its key)
        config = dataclasses.replace(config, apply_chat_template=row.apply_chat_template)
    runs = []
    for label, adapter in zip(row.run_labels(), row.adapters(), strict=True):
        folder = output_dir / row.name / label if label else output_dir / row.name
        name = f"{row.name}/{label}" if label else row.name
        runs.append(evaluate_run(config, adapter, model_path, folder, restart, name))
    if not is_main_process():
        return None
    return [run for run in runs if run is not None]


def run_eval(
    config: EvalConfig, config_source: str | None = None, force: bool = False
) -> Path | None:
    """Check the inputs, evaluate every row (resuming; ``force``: afresh), write the report.

    Returns the report path; None in the non-main processes of ``accelerate launch``.
    """
    from refine_af.lock import hold

    model_path = check_inputs(config)
    output_dir = Path(config.output_dir).expanduser()
    # One eval per output directory (refine_af.lock): taken before any row loads its model.
    with hold(output_dir, "eval output directory"):
        return _run_rows(config, config_source, force, model_path, output_dir)


def _run_rows(
    config: EvalConfig,
    config_source: str | None,
    force: bool,
    model_path: str,
    output_dir: Path,
) -> Path | None:
    from refine_af.evaluation.report import write_report

    main = is_main_process()
    if main:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(
                output_dir / "eval_config.json", {"source": config_source, **to_dict(config)}
            )
        except OSError as error:
            raise UserError(
                f"cannot write to output_dir {output_dir} ({error.strerror or error}): set "
                "output_dir to a folder you can write to"
            ) from error
    rows = {}
    for row in config.rows:
        rows[row.name] = evaluate_row(config, row, model_path, output_dir, restart=force)
    if not main:
        return None
    return write_report(
        rows,
        output_dir,
        pairs=config.pairs(),
        bootstrap_samples=config.bootstrap_samples,
        seed=config.seed,
        title=f"SuperNI evaluation of {config.model} ({config.prompt} prompt)",
    )
