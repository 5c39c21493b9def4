"""``refineaf-hf``: lm-eval's HF model with a faster greedy ``generate_until`` for CPU runs.

Same model loading, tokenisation, stop-sequence handling and post-processing as lm-eval's
``hf`` model (it subclasses ``HFLM``; ``peft=``, ``dtype=`` etc. work unchanged). What differs,
and why it is faster on a small CPU:

* **Token-budget batching by length.** Requests are sorted by prompt length and packed into
  batches of at most ``batch_size`` rows and ``token_budget`` padded prompt tokens: short prompts
  go 64 at a time (a decode step costs about the same for 8 or 64 rows on CPU, since it is bound
  by reading the weights), long ones a few at a time (no 16 x 2,800-token padded batch).
* **Per-row stopping and dropping finished rows.** lm-eval's stop criterion ends a batch only
  when *every* row has produced the *same* stop string, so one rambling row keeps 15 finished
  ones decoding to ``max_gen_toks``. Here each row stops at its own first stop string or EOS.
  Decoding is the stages' loop (``refine_af.generation.TransformersBackend``): a preallocated KV
  cache written in place, finished rows removed from the batch.
* **Input truncation (a documented scoring choice).** Prompts longer than
  ``max_input_tokens`` (default 1,024, Tk-Instruct's standard setting) lose the end of the task
  input, never the final ``"\\nOutput:"`` cue. lm-eval's ``hf`` model would keep the whole prompt
  (or cut its *beginning*, the task definition). Only prompts over the limit change (in the 30
  offline tasks: a few EUR-Lex documents). ``max_input_tokens=0`` turns truncation off.
* Prompt logits only for the last position (``logits_to_keep=1``), not the full vocabulary for
  every prompt token.
* **Prefix cache** (``prefix_cache``, on by default). The 20-100 instances of a SuperNI task
  share its definition (about half of each prompt; with ``apply_chat_template`` the chat header
  too). The longest token prefix that a batch's prompts of one task share is computed once and
  its keys and values are copied to each of their rows, as vLLM's prefix caching does; only each
  prompt's own tail is pre-filled. Prompts are compared as token ids after tokenizing each one
  whole (and truncating it), so a prefix never differs from what the prompt alone would give.
  ``prefix_cache=False`` computes every prompt from scratch; the answers are the same.

Greedy decoding only; requests with sampling settings fall back to ``HFLM.generate_until``.
Outputs equal the ``hf`` model's for untruncated prompts up to floating-point effects of batch
composition (different padding can flip a near-tie in greedy decoding, rarely).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, postprocess_generated_text
from tqdm import tqdm

from refine_af.evaluation.prompts import OUTPUT_CUE
from refine_af.generation import GenerationTiming, SamplingParams, TransformersBackend

log = logging.getLogger(__name__)

MODEL_NAME = "refineaf-hf"


def _is_greedy(kwargs: dict[str, Any]) -> bool:
    if kwargs.get("do_sample"):
        return False
    temperature = kwargs.get("temperature", 0.0)
    return temperature in (None, 0, 0.0) or kwargs.get("do_sample") is False


def _flag(value: bool | str) -> bool:
    """A boolean model argument, also as lm-eval passes it from a command line ("False")."""
    if isinstance(value, str):
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(value)


def plan_batches(lengths: list[int], max_rows: int, token_budget: int) -> list[list[int]]:
    """Indices grouped into batches, longest prompts first.

    A batch holds at most ``max_rows`` rows and ``rows x longest prompt`` at most
    ``token_budget`` tokens (a single over-long prompt still gets a batch of its own).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and (len(current) >= max_rows or (len(current) + 1) * longest > token_budget):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@register_model(MODEL_NAME)
class RefineAFLM(HFLM):
    """HFLM with token-budget batching, per-row stopping and Tk-Instruct input truncation."""

    def __init__(
        self,
        *args: Any,
        max_input_tokens: int = 1024,
        token_budget: int = 16384,
        threads: int | None = None,
        prefix_cache: bool | str = True,
        **kwargs: Any,
    ) -> None:
        if threads:
            torch.set_num_threads(int(threads))
        # lm-eval passes model_args as strings from the command line.
        self.max_input_tokens = int(max_input_tokens)
        self.token_budget = int(token_budget)
        self.prefix_cache = _flag(prefix_cache)
        # Where the greedy path's time went, summed over its batches (prefill, decode, tokens
        # taken from a shared prefix).
        self.timing = GenerationTiming()
        kwargs.setdefault("batch_size", 64)
        super().__init__(*args, **kwargs)

    # ---------------------------------------------------------------- tokenisation

    def _special_kwargs(self, text: str) -> dict[str, bool]:
        """The add_special_tokens choice of ``HFLM.tok_batch_encode`` (same token ids)."""
        from lm_eval.models.utils import has_bos_prefix

        if has_bos_prefix(text, getattr(self.tokenizer, "bos_token", None)):
            return {"add_special_tokens": False}
        if self.add_bos_token is not None:
            return {"add_special_tokens": self.add_bos_token}
        return {}

    def encode_prompt(self, text: str, max_ctx_len: int) -> list[int]:
        """Token ids of a prompt, truncated Tk-Instruct style when it is too long."""
        ids = self.tokenizer(text, **self._special_kwargs(text))["input_ids"]
        limit = max_ctx_len
        if self.max_input_tokens > 0:
            limit = min(limit, self.max_input_tokens)
        if len(ids) <= limit:
            return ids
        if text.endswith(OUTPUT_CUE):
            # Cut the end of the task input, keep the cue the answer follows.
            head = self.tokenizer(text[: -len(OUTPUT_CUE)], **self._special_kwargs(text))
            cue = self.tokenizer(OUTPUT_CUE, add_special_tokens=False)["input_ids"]
            return head["input_ids"][: limit - len(cue)] + cue
        return ids[-limit:]  # other prompts: lm-eval's left truncation

    # ---------------------------------------------------------------- generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps(request.args[1], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        pbar = tqdm(
            total=len(requests),
            disable=disable_tqdm or self.rank != 0,
            desc="generate (refineaf-hf)",
            leave=False,  # `refineaf eval` keeps one bar per run over all its chunks
        )
        for indices in groups.values():
            gen_kwargs = dict(requests[indices[0]].args[1])
            if not _is_greedy(gen_kwargs) or self.backend != "causal":
                outputs = super().generate_until([requests[i] for i in indices], True)
                for i, text in zip(indices, outputs, strict=True):
                    results[i] = text
                pbar.update(len(indices))
                continue
            self._generate_greedy(requests, indices, gen_kwargs, results, pbar)
        pbar.close()
        return [r if r is not None else "" for r in results]

    def _generate_greedy(
        self,
        requests: list[Any],
        indices: list[int],
        gen_kwargs: dict[str, Any],
        results: list[str | None],
        pbar: Any,
    ) -> None:
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        until = handle_stop_sequences(gen_kwargs.pop("until", None), eos=eos)
        max_gen_toks = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
        max_ctx_len = self.max_length - max_gen_toks
        contexts = [requests[i].args[0] for i in indices]
        encoded = [self.encode_prompt(text, max_ctx_len) for text in contexts]
        eos_ids = {self.eot_token_id}
        config_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if config_eos is not None:
            eos_ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
        max_rows = self.batch_size if isinstance(self.batch_size, int) else 64
        for batch in plan_batches([len(e) for e in encoded], max_rows, self.token_budget):
            generated = self._greedy_batch(
                [encoded[b] for b in batch], max_gen_toks, until, eos_ids
            )
            for b, tokens in zip(batch, generated, strict=True):
                text = postprocess_generated_text(self.tok_decode(tokens), until, None)
                results[indices[b]] = text
                self.cache_hook.add_partial(
                    "generate_until", (contexts[b], requests[indices[b]].args[1]), text
                )
            pbar.update(len(batch))

    def _greedy_batch(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        until: list[str],
        eos_ids: set[int],
    ) -> list[list[int]]:
        """Greedy continuations through the stages' decode loop; EOS is not part of an answer."""
        backend = TransformersBackend(
            self.model,
            self.tokenizer,
            batch_size=len(prompts),
            eos_token_ids=eos_ids,
            share_prefixes=self.prefix_cache,
        )
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(s for s in until if s)
        )
        generated = backend.generate_ids(prompts, params)
        for name, value in vars(backend.timing).items():
            setattr(self.timing, name, getattr(self.timing, name) + value)
        return [ids[:-1] if ids and ids[-1] in eos_ids else ids for ids in generated]
