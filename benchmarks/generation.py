"""Benchmark: new tokens/s of stage-1 generation, plain ``model.generate`` vs the project's path.

Run by hand from the repository root::

    OMP_NUM_THREADS=2 python benchmarks/generation.py                 # batch 1 and 32
    python benchmarks/generation.py --batch-sizes 64,1 --max-new-tokens 160 \
        --seed-tasks ../shared/data/self_instruct_seed_tasks.jsonl
    python benchmarks/generation.py --workload short --batch-sizes 64 --max-new-tokens 128

It loads the embedded default model (SmolLM2-135M-Instruct, CPU float32). ``--workload stage1``
(the default) builds realistic stage-1 prompts: ``refine_af.prompts.instruction_prompt`` with 8
seed instructions drawn at random (seeded) from the seed file, in the chat template, sampled with
stage 1's settings (temperature 0.7, top-p 0.5, presence penalty 2.0, stop "\\n\\n").
``--workload short`` asks one-line questions with long answers instead (temperature 0.7, no stop
string), where decoding dominates. Every batch size is measured twice, on the
same prompts and in the same process:

(a) reference: plain ``model.generate`` on the left-padded batch (what ``TransformersBackend`` did
    before it had its own decode loop; ``TransformersBackend(fast=False)``), and
(b) project: ``TransformersBackend.generate`` (``refine_af.generation``).

New tokens count only real tokens: up to and including the one that completed a stop string or
the token limit, not the EOS and not the padding ``generate`` appends to rows that have ended.
Sampling makes the two paths write different texts, so their token counts differ a little; the
rate (new tokens / wall seconds, prefill included) is what is compared. For the project path the
run also prints the split: prompt tokens per second in the prefill and new tokens per second in
the decode loop alone (``TransformersBackend.timing``), since with 150-390-token prompts and
completions of a few dozen tokens the prefill is most of the wall time. Batch 1 uses
``--batch1-prompts`` prompts one at a time. The order of (a) and (b) alternates between batch sizes
so that a load change on a shared machine does not always favour one of them.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from refine_af.generation import SamplingParams, TransformersBackend
from refine_af.models import load_model_and_tokenizer
from refine_af.prompts import instruction_prompt, render_chat
from refine_af.seeds import SEED_TASKS_ENV, load_seed_tasks

REPO = Path(__file__).resolve().parents[1]


def default_seed_tasks() -> str:
    return os.environ.get(SEED_TASKS_ENV) or str(
        REPO.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
    )


def measure(
    backend: TransformersBackend, prompts: list[str], params: SamplingParams, seed: int
) -> tuple[int, float, int]:
    import transformers

    transformers.set_seed(seed)
    start = time.perf_counter()
    completions = backend.generate(prompts, params)  # batch size 1: one prompt at a time
    seconds = time.perf_counter() - start
    tokens = sum(c.num_tokens for c in completions)
    stopped = sum(c.finish_reason == "stop" for c in completions)
    return tokens, seconds, stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-tasks", default=default_seed_tasks())
    parser.add_argument("--batch-sizes", default="1,32", help="comma-separated (stage 1: 32)")
    parser.add_argument("--batch1-prompts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--workload",
        choices=["stage1", "short"],
        default="stage1",
        help="stage1: Self-Instruct prompts, stage-1 sampling; short: one-line chat requests "
        "(~40 tokens) answered at length, T=0.7, no stop string (decode-dominated)",
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model_and_tokenizer("default", device="cpu")
    seeds = load_seed_tasks(Path(args.seed_tasks))
    rng = random.Random(args.seed)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    count = max(max(sizes), args.batch1_prompts)
    if args.workload == "stage1":
        prompts = [
            instruction_prompt(tokenizer, [s.instruction for s in rng.sample(seeds, 8)], True)
            for _ in range(count)
        ]
        params = SamplingParams(
            max_new_tokens=args.max_new_tokens,
            temperature=0.7,
            top_p=0.5,
            stop=("\n\n",),
            presence_penalty=2.0,
        )
        sampling = "T=0.7, top_p=0.5, presence 2.0, stop \\n\\n"
    else:
        # Seed instructions as one-line requests: short prompts, long answers.
        prompts = [
            render_chat(tokenizer, f"Explain in detail: {s.instruction}", "", True)
            for s in rng.sample(seeds, count)
        ]
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.7)
        sampling = "T=0.7, no stop string"
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    print(
        f"model: default (SmolLM2-135M-Instruct), {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; workload {args.workload}: prompts "
        f"{min(lengths)}-{max(lengths)} tokens; max_new_tokens {args.max_new_tokens}, {sampling}"
    )
    header = f"{'batch':>5}  {'path':<26} {'new tok':>7} {'seconds':>8} {'tok/s':>7} {'stop':>6}"
    print(header)
    for number, size in enumerate(sizes):
        batch_prompts = prompts[: args.batch1_prompts] if size == 1 else prompts[:size]
        variants = [
            ("reference model.generate", TransformersBackend(model, tokenizer, size, fast=False)),
            ("project TransformersBackend", TransformersBackend(model, tokenizer, size)),
        ]
        if number % 2:
            variants.reverse()
        rates = {}
        for name, backend in variants:
            tokens, seconds, stopped = measure(backend, batch_prompts, params, args.seed)
            rates[name] = tokens / seconds
            print(
                f"{size:>5}  {name:<26} {tokens:>7} {seconds:>8.1f} {tokens / seconds:>7.1f} "
                f"{stopped:>3}/{len(batch_prompts)}",
                flush=True,
            )
        ratio = rates["project TransformersBackend"] / rates["reference model.generate"]
        print(f"{size:>5}  project / reference: {ratio:.2f}x", flush=True)
        timing = dict(variants)["project TransformersBackend"].timing
        print(
            f"{size:>5}  project split: prefill {timing.prompt_tokens} prompt tokens in "
            f"{timing.prefill_seconds:.1f} s ({timing.prompt_tokens / timing.prefill_seconds:.0f}"
            f" tok/s), decode {timing.new_tokens} new tokens in {timing.decode_seconds:.1f} s "
            f"({timing.new_tokens / timing.decode_seconds:.1f} tok/s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
