"""bfloat16 vs float32 on this CPU: the decode loop, prefill and the eval's greedy answers.

Run by hand from the repository root::

    python benchmarks/bf16.py                        # 200 SuperNI prompts, both dtypes
    python benchmarks/bf16.py --prompts 40 --matmul  # quicker; adds a raw matmul comparison

Both dtypes run in this one process on the same prompts: the embedded default model
(SmolLM2-135M-Instruct) loaded in float32, and the same weights cast to bfloat16. Three
measurements per dtype:

* ``matmul`` (``--matmul``): GFLOPS of a square ``torch.mm`` and of one decode-shaped linear
  layer (batch x 576 -> 1536), the kernels the model's time goes to;
* ``prefill``: prompt tokens per second of ``model(..., logits_to_keep=1)`` over the prompts, in
  batches of similar length (``--prefill-batch`` rows);
* ``eval``: the eval's greedy answers: the SuperNI "definition" prompt
  (``refine_af.evaluation.prompts.format_prompt``) of the first ``--prompts`` instances taken
  round-robin over the tasks of ``$REFINEAF_SUPERNI_DATA``, truncated at 1,024 tokens as
  ``refineaf-hf`` does, batched by ``refine_af.evaluation.lm.plan_batches`` and decoded with
  ``refine_af.generation.TransformersBackend`` (greedy, 128 new tokens, the eval's stop strings).
  Prints tokens/s of its prefill and of its decode loop (``TransformersBackend.timing``) and the
  share of answers identical to float32's.

It prints bfloat16 / float32 ratios. The machine's load is printed with each timing; the two
dtypes alternate per workload so that a load change does not always favour one of them. The
issue's rule: adopt bfloat16 for ``dtype: auto`` on CPU only where it is faster with >= 98% of
greedy answers identical.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, uninstalled

import torch  # noqa: E402

from refine_af.evaluation.lm import plan_batches  # noqa: E402
from refine_af.evaluation.prompts import OUTPUT_CUE, format_prompt  # noqa: E402
from refine_af.generation import SamplingParams, TransformersBackend, cut_at_stop  # noqa: E402
from refine_af.models import load_model_and_tokenizer  # noqa: E402

STOP = ("\n\n", "\nInput:", "\nOutput:", "\nDefinition:")  # the eval task's `until`
MAX_INPUT_TOKENS = 1024
MAX_NEW_TOKENS = 128


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    wanted = [f for f in flags.split() if f.startswith(("avx512", "amx")) or f == "avx2"]
    return " ".join(sorted(set(wanted))) or "none of avx2/avx512/amx"


def superni_prompts(path: str, count: int) -> list[str]:
    """``count`` eval prompts, taken round-robin over the tasks (first instances first)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            by_task.setdefault(doc["task_name"], []).append(doc)
    prompts: list[str] = []
    depth = 0
    while len(prompts) < count:
        added = False
        for docs in by_task.values():
            if depth < len(docs) and len(prompts) < count:
                prompts.append(format_prompt(docs[depth]))
                added = True
        if not added:
            break
        depth += 1
    return prompts


def encode(tokenizer: Any, prompt: str) -> list[int]:
    """``refineaf-hf``'s truncation: cut the end of the task input, keep the output cue."""
    ids = tokenizer(prompt)["input_ids"]
    if len(ids) <= MAX_INPUT_TOKENS:
        return ids
    cue = tokenizer(OUTPUT_CUE, add_special_tokens=False)["input_ids"]
    head = tokenizer(prompt[: -len(OUTPUT_CUE)])["input_ids"]
    return head[: MAX_INPUT_TOKENS - len(cue)] + cue


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def matmul_rates(dtype: torch.dtype, size: int, repeats: int) -> tuple[float, float]:
    """GFLOPS of a square mm and of a decode-shaped linear (16 x 576 -> 1536)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    _, seconds = timed(lambda: [a @ b for _ in range(repeats)])
    square = 2 * size**3 * repeats / seconds / 1e9
    x = torch.randn(16, 576, dtype=dtype)
    w = torch.randn(1536, 576, dtype=dtype)
    torch.nn.functional.linear(x, w)
    calls = 50 * repeats
    _, seconds = timed(lambda: [torch.nn.functional.linear(x, w) for _ in range(calls)])
    linear = 2 * 16 * 576 * 1536 * calls / seconds / 1e9
    return square, linear


def prefill_rate(model: Any, rows: list[list[int]], batch: int, pad: int) -> float:
    """Prompt tokens per second of the forward pass (last position's logits only)."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    tokens, seconds = 0, 0.0
    for start in range(0, len(order), batch):
        group = [rows[i] for i in order[start : start + batch]]
        width = len(group[0])
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for j, row in enumerate(group):
            ids[j, width - len(row) :] = torch.tensor(row)
            mask[j, width - len(row) :] = 1
        started = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        spent = time.perf_counter() - started
        tokens += sum(len(r) for r in group)
        seconds += spent
    return tokens / seconds


def greedy_answers(
    model: Any, tokenizer: Any, rows: list[list[int]], batch_rows: int, token_budget: int
) -> tuple[list[str], TransformersBackend, float]:
    """The eval's greedy answers (text cut at the first stop string) and the backend's timing."""
    eos = {tokenizer.eos_token_id}
    config_eos = getattr(model.generation_config, "eos_token_id", None)
    if config_eos is not None:
        eos.update(config_eos if isinstance(config_eos, list) else [config_eos])
    answers: list[str] = [""] * len(rows)
    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, stop=STOP)
    total = TransformersBackend(model, tokenizer, batch_size=1, eos_token_ids=eos)
    started = time.perf_counter()
    for batch in plan_batches([len(r) for r in rows], batch_rows, token_budget):
        backend = TransformersBackend(model, tokenizer, batch_size=len(batch), eos_token_ids=eos)
        generated = backend.generate_ids([rows[i] for i in batch], params)
        for index, ids in zip(batch, generated, strict=True):
            ids = ids[:-1] if ids and ids[-1] in eos else ids
            answers[index] = cut_at_stop(tokenizer.decode(ids), STOP)[0]
        for name in ("prompt_tokens", "new_tokens", "prefill_seconds", "decode_seconds"):
            setattr(total.timing, name, getattr(total.timing, name) + getattr(backend.timing, name))
    return answers, total, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200, help="SuperNI prompts")
    parser.add_argument("--data", default=os.environ.get("REFINEAF_SUPERNI_DATA"))
    parser.add_argument("--batch-size", type=int, default=64, help="eval rows per batch")
    parser.add_argument("--token-budget", type=int, default=16384, help="eval prompt tokens/batch")
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--matmul", action="store_true", help="also time raw matmuls")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if not args.data:
        parser.error("set REFINEAF_SUPERNI_DATA or --data (a superni_test.jsonl.gz)")
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, flags: {cpu_flags()}"
    )
    print(f"load at start: {load()}", flush=True)
    model32, tokenizer = load_model_and_tokenizer("default", device="cpu", dtype="float32")
    model16, _ = load_model_and_tokenizer("default", device="cpu", dtype="bfloat16")
    models = {"float32": model32, "bfloat16": model16}
    prompts = superni_prompts(args.data, args.prompts)
    rows = [encode(tokenizer, p) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    print(
        f"{len(rows)} prompts, {sum(map(len, rows))} prompt tokens (longest {max(map(len, rows))})",
        flush=True,
    )

    results: dict[str, dict[str, float]] = {name: {} for name in models}
    answers: dict[str, list[str]] = {}
    order = list(models)
    if args.matmul:
        for name in order:
            dtype = getattr(torch, name)
            square, linear = matmul_rates(dtype, args.matmul_size, 3)
            results[name]["mm GFLOPS"] = square
            results[name]["linear GFLOPS"] = linear
            print(
                f"  matmul {name}: mm {square:.1f} GFLOPS, linear {linear:.1f} GFLOPS "
                f"(load {load()})",
                flush=True,
            )
        order.reverse()
    for name in order:
        rate = prefill_rate(models[name], rows, args.prefill_batch, pad)
        results[name]["prefill tok/s"] = rate
        print(f"  prefill {name}: {rate:.1f} prompt tok/s (load {load()})", flush=True)
    order.reverse()
    for name in order:
        texts, backend, seconds = greedy_answers(
            models[name], tokenizer, rows, args.batch_size, args.token_budget
        )
        answers[name] = texts
        timing = backend.timing
        results[name]["eval wall s"] = seconds
        results[name]["eval new tok/s"] = timing.new_tokens / seconds
        results[name]["eval prefill tok/s"] = timing.prompt_tokens / timing.prefill_seconds
        results[name]["eval decode tok/s"] = timing.new_tokens / timing.decode_seconds
        print(
            f"  eval {name}: {seconds:.1f} s, {timing.new_tokens} new tokens, decode "
            f"{results[name]['eval decode tok/s']:.1f} tok/s (load {load()})",
            flush=True,
        )

    identical = sum(a == b for a, b in zip(answers["float32"], answers["bfloat16"], strict=True))
    share = identical / len(rows)
    print()
    print("| measure | float32 | bfloat16 | bf16 / fp32 |")
    print("|---|---:|---:|---:|")
    for key in results["float32"]:
        a, b = results["float32"][key], results["bfloat16"][key]
        print(f"| {key} | {a:,.1f} | {b:,.1f} | {b / a:.2f} |")
    print(f"| identical greedy answers | | | {identical}/{len(rows)} ({100 * share:.1f}%) |")
    faster = results["bfloat16"]["eval wall s"] < results["float32"]["eval wall s"]
    verdict = "adopt" if faster and share >= 0.98 else "keep float32"
    print(
        f"\nbfloat16 faster end to end: {faster}; identical >= 98%: {share >= 0.98} -> "
        f"{verdict}. Load at end: {load()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
