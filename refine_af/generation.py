"""Text generation behind one small interface: transformers by default, vLLM when installed.

Stages build prompt strings (chat template already applied) and ask a backend for completions;
they never touch ``model.generate`` themselves, so the paper-scale path (vLLM on a GPU) and the
CPU path share every line of stage logic.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from refine_af.errors import UserError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion per prompt."""

    max_new_tokens: int = 256
    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    # OpenAI-style: subtract this from the logit of every token the completion already used.
    # Self-Instruct sampled instructions with presence_penalty=2; without it a small model
    # repeats one list item until the token limit.
    presence_penalty: float = 0.0
    # None: the model's generation config (transformers' default 50 when it sets none); 0: off.
    top_k: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str  # the new text, cut before the first stop string
    finish_reason: FinishReason  # "length" when the token limit cut it off
    num_tokens: int  # new tokens produced (up to and including the stop)


@dataclass
class GenerationTiming:
    """Where a backend's time went, summed over its ``generate`` calls (fast path only)."""

    prompt_tokens: int = 0
    prefill_rows: int = 0  # prompts run through the model (a repeated prompt counts once)
    # Prompt tokens whose keys and values were copied from a shared prefix, not computed.
    reused_prefix_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0


# The fewest prompt tokens worth sharing: below it a prefix's own model call and copies cost
# about what they save.
MIN_SHARED_PREFIX = 16


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading token ids ``a`` and ``b`` have in common."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def prefix_groups(
    rows: Sequence[Sequence[int]], min_shared: int = MIN_SHARED_PREFIX
) -> list[tuple[int, list[int]]]:
    """Rows grouped by a shared token prefix: ``(shared length, row indices)`` per group.

    Rows are compared as token ids (never re-tokenized pieces), in lexicographic order, where
    rows with a long common prefix are neighbours. A row joins the group before it while the
    prompt tokens the group saves (``(rows - 1) x shared length``) do not shrink and the shared
    length stays at least ``min_shared``; the shared length is always shorter than each row, so
    every row has a token of its own to prefill (its last logits). Rows that share nothing worth
    it form one last group of shared length 0. Within a group, longest row first (then by index).
    """
    order = sorted(range(len(rows)), key=lambda i: list(rows[i]))
    groups: list[tuple[int, list[int]]] = []
    unshared: list[int] = []
    current: list[int] = []
    shared = 0

    def close() -> None:
        if len(current) >= 2 and shared >= min_shared:
            groups.append((shared, current))
        else:
            unshared.extend(current)

    for index in order:
        if current:
            common = min(
                shared, common_prefix_length(rows[current[-1]], rows[index]), len(rows[index]) - 1
            )
            size = len(current)
            if common >= min_shared and size * common >= (size - 1) * shared:
                current.append(index)
                shared = common
                continue
            close()
        current, shared = [index], len(rows[index]) - 1
    if current:
        close()
    if unshared:
        groups.append((0, unshared))
    ranked = [(length, sorted(group, key=lambda i: (-len(rows[i]), i))) for length, group in groups]
    return sorted(ranked, key=lambda item: (-len(rows[item[1][0]]), item[1][0]))


class GenerationBackend(Protocol):
    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in the prompts' order."""
        ...


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; say whether one was found."""
    positions = [text.find(s) for s in stop if s]
    positions = [p for p in positions if p >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True


def presence_penalty_processor(penalty: float, prompt_length: int) -> Any:
    """A transformers logits processor applying an OpenAI-style presence penalty."""
    import torch
    from transformers import LogitsProcessor

    class PresencePenalty(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            generated = input_ids[:, prompt_length:]
            if generated.shape[1] == 0:
                return scores
            used = torch.zeros_like(scores, dtype=torch.bool)
            used.scatter_(1, generated, True)
            return scores - penalty * used.to(scores.dtype)

    return PresencePenalty()


class TransformersBackend:
    """Batched generation with a KV cache, on any transformers causal LM.

    The default path (``fast=True``) is a hand-written decode loop rather than ``model.generate``,
    because on a CPU ``generate`` spends most of its time on work other than the model's:

    * the KV cache is written in place, prefill included, and grows in chunks
      (:mod:`refine_af.kv_cache`); transformers' dynamic cache re-copies the whole cache with
      ``torch.cat`` every step;
    * a row that emits EOS, a stop string or its last allowed token is finished at once, and
      finished rows leave the batch (and the cache) once they are a quarter of it: ``generate``
      keeps every row until the last one is done, and with the ``"\\n\\n"`` stop of stage 1 most
      rows end long before the slowest;
    * sampling draws among the top-k logits only (``generate``'s distribution, see ``_sample``);
    * prompts are pre-filled in groups of similar length (prompts sorted longest first, a group
      ends when padding would exceed ``max_prefill_padding`` of its tokens or ``prefill_tokens``),
      each group writing, left-padded, into its rows of the one decode cache;
    * a token prefix that several prompts of a batch share (a SuperNI task's definition, a
      stage's few-shot header; ``share_prefixes``) is computed once and its keys and values
      copied to each of those rows, as vLLM's prefix caching does; a repeated prompt is
      computed once;
    * only the last position's logits are computed (``logits_to_keep=1``), and the
      presence-penalty mask is kept incrementally.

    Semantics are ``generate``'s: the same position ids (cumsum of the attention mask), the same
    logits pipeline (presence penalty, then temperature, top-k from ``SamplingParams.top_k`` or
    the model's generation config or transformers' default 50, top-p), ``argmax`` for greedy,
    stop on any of the generation config's EOS ids. Greedy output equals ``generate``'s (tested).
    Seeded sampling is reproducible, from the same distribution as ``generate`` but not the same
    draws. ``fast=False`` calls ``model.generate``; ``timing`` sums where the fast path's time went.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 64,
        *,
        fast: bool = True,
        prefill_tokens: int = 8192,
        max_prefill_padding: float = 0.1,
        eos_token_ids: Sequence[int] | set[int] | None = None,
        share_prefixes: bool = True,
    ) -> None:
        if batch_size < 1:
            raise UserError(f"generation batch size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.fast = fast
        self.prefill_tokens = prefill_tokens
        self.max_prefill_padding = max_prefill_padding
        self.share_prefixes = share_prefixes
        # The ids that end a row; by default the model's generation config's (or the tokenizer's).
        self.eos_token_ids = None if eos_token_ids is None else {int(e) for e in eos_token_ids}
        self.timing = GenerationTiming()

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        if not self.fast:
            return self._generate_reference(prompts, params)
        new_ids = self.generate_ids(self.tokenizer(list(prompts))["input_ids"], params)
        return [self._completion(ids, params) for ids in new_ids]

    def generate_ids(
        self, prompt_ids: Sequence[Sequence[int]], params: SamplingParams
    ) -> list[list[int]]:
        """The new token ids of each prompt (ending with the EOS id where EOS ended it)."""
        return self._by_length(
            [len(ids) for ids in prompt_ids],
            lambda batch: self._decode_loop([list(prompt_ids[i]) for i in batch], params),
        )

    def _by_length(
        self, lengths: list[int], run: Callable[[list[int]], list[list[int]]]
    ) -> list[list[int]]:
        """``run`` on batches of indices, longest prompts first; results in the input order."""
        import torch

        from refine_af.models import trim_heap

        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        results: list[list[int]] = [[] for _ in lengths]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            with torch.inference_mode():
                for index, ids in zip(batch, run(batch), strict=True):
                    results[index] = ids
            trim_heap()  # the batch's cache is freed: give it back before the next one
        return results

    # -- the reference path: plain ``model.generate`` ------------------------------------------

    def _generate_reference(
        self, prompts: Sequence[str], params: SamplingParams
    ) -> list[Completion]:
        lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
        new_ids = self._by_length(
            lengths, lambda batch: self._reference_generate([prompts[i] for i in batch], params)
        )
        return [self._completion(ids, params) for ids in new_ids]

    def _reference_generate(self, prompts: list[str], params: SamplingParams) -> list[list[int]]:
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
            | ({} if params.top_k is None else {"top_k": params.top_k})
            if params.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if params.presence_penalty:
            prompt_length = encoded["input_ids"].shape[1]
            sampling["logits_processor"] = [
                presence_penalty_processor(params.presence_penalty, prompt_length)
            ]
        output = self.model.generate(
            **encoded,
            max_new_tokens=params.max_new_tokens,
            stop_strings=list(params.stop) or None,
            tokenizer=self.tokenizer,
            pad_token_id=self.tokenizer.pad_token_id,
            **sampling,
        )
        return output[:, encoded["input_ids"].shape[1] :].tolist()

    # -- the fast path ---------------------------------------------------------------------------

    def _eos_ids(self) -> set[int]:
        if self.eos_token_ids is not None:
            return self.eos_token_ids
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}

    def _warpers(self, params: SamplingParams) -> tuple[list[Any], int]:
        """``generate``'s sampling warpers after top-k, in its order, and top-k itself.

        The presence penalty comes before all of them, top-k after the temperature (the order
        of the two does not matter: dividing by a temperature keeps the ranking).
        """
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        warpers: list[Any] = []
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        top_k = params.top_k
        if top_k is None:
            config = getattr(self.model, "generation_config", None)
            top_k = getattr(config, "top_k", None)
            top_k = 50 if top_k is None else top_k  # transformers' default when a model sets none
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=params.top_p))
        return warpers, int(top_k or 0)

    def _prefill(self, rows: list[list[int]], capacity: int) -> tuple[Any, Any, Any, list[int]]:
        """Run the prompts through the model; return logits, cache, mask and row order.

        Batch position ``j`` of the returned logits, cache and mask holds row ``order[j]``. A
        prompt that comes several times (stage 2 samples each prompt ``num_generations`` times)
        is run once and its keys and values copied to its other rows (then in ``rows``' order).
        """
        import torch

        distinct: dict[tuple[int, ...], int] = {}
        first_of = [distinct.setdefault(tuple(ids), len(distinct)) for ids in rows]
        if len(distinct) == len(rows):
            return self._prefill_distinct(rows, capacity)
        logits, cache, mask, order = self._prefill_distinct(
            [list(ids) for ids in distinct], capacity
        )
        position = {row: j for j, row in enumerate(order)}
        index = torch.tensor([position[d] for d in first_of], device=logits.device)
        for layer in cache.layers:
            layer.select_rows(index)
        return logits[index], cache, mask[index], list(range(len(rows)))

    def _prefill_distinct(
        self, rows: list[list[int]], capacity: int
    ) -> tuple[Any, Any, Any, list[int]]:
        """:meth:`_prefill` for rows that all differ.

        The decode cache starts with room for ``capacity`` positions and grows as rows need more
        (:mod:`refine_af.kv_cache`). Rows sharing a token prefix (:func:`prefix_groups`) sit next
        to each other: the prefix is run once, in the group's first row, and copied to the
        others; each row's remaining tokens end at the last prompt position, so a row reads
        ``[prefix, masked gap, own tokens]`` (position ids count real tokens only, as
        ``generate``'s do). Those remaining tokens are pre-filled in groups of similar length,
        left padded, written straight into the decode cache.
        """
        import torch

        from refine_af.kv_cache import copy_prefix, preallocated_cache

        if self.share_prefixes:
            plan = prefix_groups(rows)
        else:
            plan = [(0, sorted(range(len(rows)), key=lambda i: (-len(rows[i]), i)))]
        order = [row for _, members in plan for row in members]
        width = max(len(ids) for ids in rows)
        cache = preallocated_cache(self.model, len(rows), capacity)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=self.model.device)
        logits: list[Any] = []
        first = 0  # the prefix group's first row in the batch
        for shared, members in plan:
            if shared:
                prefix = rows[members[0]][:shared]
                self._forward(cache, slice(first, first + 1), 0, 0, [prefix], mask, 0)
                copy_prefix(cache, first, slice(first + 1, first + len(members)), shared)
                mask[first : first + len(members), :shared] = 1
                self.timing.reused_prefix_tokens += shared * (len(members) - 1)
            tail_lengths = [len(rows[m]) - shared for m in members]
            for start, stop in self._length_groups(tail_lengths, shared):
                tails = [rows[m][shared:] for m in members[start:stop]]
                rows_here = slice(first + start, first + stop)
                left = width - len(tails[0])  # where this group's (padded) tokens start
                if shared:  # attend to the prefix (and the masked gap after it)
                    logits.append(self._forward(cache, rows_here, 0, left, tails, mask, shared))
                else:
                    logits.append(self._forward(cache, rows_here, left, 0, tails, mask, 0))
            first += len(members)
        self.timing.prefill_rows += len(rows)
        for layer in cache.layers:
            layer.set_length(width)
        return torch.cat(logits), cache, mask, order

    def _length_groups(self, lengths: list[int], shared: int = 0) -> list[tuple[int, int]]:
        """``[start, stop)`` ranges of ``lengths`` (longest first) to pre-fill together.

        A range ends when its padded size would exceed ``prefill_tokens`` or its padding
        ``max_prefill_padding`` of the prompt tokens its rows stand for, their ``shared`` prefix
        included: the tail after a shared prefix is short, and a model call per few tokens of
        length costs more than the padding it avoids.
        """
        ranges: list[tuple[int, int]] = []
        start = 0
        for stop in range(1, len(lengths) + 1):
            if stop == len(lengths):
                ranges.append((start, stop))
                break
            rows = stop - start + 1
            padded = lengths[start] * rows
            real = sum(lengths[start : stop + 1])
            allowed = self.max_prefill_padding * (padded + shared * rows)
            if padded > self.prefill_tokens or padded - real > allowed:
                ranges.append((start, stop))
                start = stop
        return ranges

    def _forward(
        self,
        cache: Any,
        rows: slice,
        start: int,
        filled: int,
        tokens: list[list[int]],
        mask: Any,
        offset: int,
    ) -> Any:
        """Pre-fill ``tokens`` (longest first, left padded) into ``rows`` of ``cache``.

        Their keys and values are written from position ``start + filled`` on, attending to the
        ``filled`` positions before them (``mask`` says which of those are real), at position ids
        ``offset`` on. Returns the last position's logits; ``mask`` gets the new tokens' columns.
        """
        import torch

        from refine_af.kv_cache import window

        device = self.model.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        group_width = len(tokens[0])
        input_ids = torch.full((len(tokens), group_width), pad, dtype=torch.long)
        group_mask = torch.zeros((len(tokens), group_width), dtype=torch.long)
        for j, ids in enumerate(tokens):
            if ids:
                input_ids[j, group_width - len(ids) :] = torch.tensor(ids)
                group_mask[j, group_width - len(ids) :] = 1
        input_ids, group_mask = input_ids.to(device), group_mask.to(device)
        # generate's position ids: count real tokens, padding at 0.
        positions = (group_mask.cumsum(-1) - 1 + offset).masked_fill(group_mask == 0, 0)
        columns = slice(start + filled, start + filled + group_width)
        attention = torch.cat([mask[rows, start : start + filled], group_mask], dim=1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention,
            position_ids=positions,
            past_key_values=window(cache, rows, start, filled),
            use_cache=True,
            logits_to_keep=1,
        )
        mask[rows, columns] = group_mask
        return out.logits[:, -1].to(dtype=torch.float32)

    def _sample(self, scores: Any, warpers: list[Any], top_k: int) -> Any:
        """Draw one token per row from ``generate``'s sampling distribution.

        Top-k comes first in ``generate``'s pipeline and temperature does not change the order, so
        only the ``top_k`` best logits can be drawn: the warpers and the draw run on those alone
        (a sort and a multinomial over 50 entries instead of the whole vocabulary, which cost
        nearly half a forward pass at batch 64). The distribution is ``generate``'s.
        """
        import torch

        if top_k and top_k < scores.shape[-1]:
            scores, candidates = torch.topk(scores, top_k, dim=-1)
        else:
            candidates = None
        for warper in warpers:
            scores = warper(None, scores)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        choice = torch.multinomial(probs, num_samples=1)
        return (choice if candidates is None else candidates.gather(1, choice)).squeeze(1)

    def _stopped(self, sequence: list[int], stops: list[str], window: int) -> bool:
        tail = self.tokenizer.decode(sequence[-window:])
        return any(s in tail for s in stops)

    def _decode_loop(self, rows: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """New token ids per row (ending with the EOS id when EOS ended it)."""
        import torch

        from refine_af.kv_cache import GROWTH

        if params.max_new_tokens < 1:
            return [[] for _ in rows]
        device = self.model.device
        eos_ids = self._eos_ids()
        stops = [s for s in params.stop if s]
        # A stop string spans at most 4 tokens per character (byte-level BPE), plus slack.
        window = 4 * max((len(s) for s in stops), default=0) + 4
        sample = params.temperature > 0
        warpers, top_k = self._warpers(params) if sample else ([], 0)

        width = max(len(ids) for ids in rows)
        started = time.perf_counter()
        # Room for a few new tokens; the cache grows for the rows that write more.
        capacity = width + min(params.max_new_tokens, GROWTH)
        logits, cache, prompt_mask, order = self._prefill(rows, capacity)
        prefilled = time.perf_counter()
        # The mask for every position the batch can reach; each step uses its first columns.
        mask = torch.cat([prompt_mask, prompt_mask.new_ones((len(rows), params.max_new_tokens))], 1)
        positions = (prompt_mask.sum(-1, keepdim=True) - 1).clamp(min=0)
        used = None
        if params.presence_penalty:
            used = torch.zeros(logits.shape, dtype=torch.bool, device=device)
        generated: list[list[int]] = [[] for _ in rows]
        # The original row of each batch row; None once it has finished. Finished rows stay in
        # the batch (their outputs ignored) until enough have piled up to be worth a compaction.
        slots: list[int | None] = list(order)
        for step in range(params.max_new_tokens):
            scores = logits
            if used is not None:
                scores = scores - params.presence_penalty * used.to(scores.dtype)
            tokens = self._sample(scores, warpers, top_k) if sample else scores.argmax(-1)

            for slot, (row, token) in enumerate(zip(slots, tokens.tolist(), strict=True)):
                if row is None:
                    continue
                sequence = generated[row]
                sequence.append(token)
                ended = token in eos_ids or len(sequence) >= params.max_new_tokens
                if ended or (stops and self._stopped(sequence, stops, window)):
                    slots[slot] = None
            live = [j for j, row in enumerate(slots) if row is not None]
            if not live:
                break
            # Removing rows copies the whole cache, about half a step's cost, so it waits until
            # a quarter of the batch is finished rows; until then they ride along.
            if len(slots) - len(live) >= max(1, len(slots) // 4):
                index = torch.tensor(live, device=device)
                for layer in cache.layers:
                    layer.select_rows(index)
                mask, positions, tokens = mask[index], positions[index], tokens[index]
                if used is not None:
                    used = used[index]
                slots = [slots[j] for j in live]
            if used is not None:
                used[torch.arange(len(slots), device=device), tokens] = True
            positions = positions + 1
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask[:, : width + step + 1],
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1].to(dtype=torch.float32)
        self.timing.prompt_tokens += sum(len(ids) for ids in rows)
        self.timing.new_tokens += sum(len(sequence) for sequence in generated)
        self.timing.prefill_seconds += prefilled - started
        self.timing.decode_seconds += time.perf_counter() - prefilled
        return generated

    def _completion(self, token_ids: list[int], params: SamplingParams) -> Completion:
        special = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        ended_by_eos = False
        kept: list[int] = []
        for token in token_ids:
            if token in special:
                ended_by_eos = token == self.tokenizer.eos_token_id or bool(kept)
                break
            kept.append(token)
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, params.stop)
        finished = stopped or ended_by_eos or len(kept) < params.max_new_tokens
        return Completion(
            text=text, finish_reason="stop" if finished else "length", num_tokens=len(kept)
        )


class VLLMBackend:
    """vLLM for GPU, paper-scale runs; same interface, continuous batching inside vLLM."""

    def __init__(self, model_path: str, seed: int, dtype: str = "auto", **llm_args: Any) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_path, seed=seed, dtype=dtype, **llm_args)

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        from vllm import SamplingParams as VLLMSamplingParams

        sampling = VLLMSamplingParams(
            temperature=params.temperature,
            top_p=params.top_p if params.temperature > 0 else 1.0,
            max_tokens=params.max_new_tokens,
            stop=list(params.stop) or None,
            presence_penalty=params.presence_penalty,
        )
        outputs = self.llm.generate(list(prompts), sampling, use_tqdm=False)
        return [
            Completion(
                text=o.outputs[0].text,
                finish_reason="length" if o.outputs[0].finish_reason == "length" else "stop",
                num_tokens=len(o.outputs[0].token_ids),
            )
            for o in outputs
        ]


def vllm_usable(device: str) -> bool:
    return importlib.util.find_spec("vllm") is not None and device.startswith("cuda")


def make_backend(
    kind: str,
    model_path: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    batch_size: int = 64,
    adapter: str | None = None,
    trust_remote_code: bool = False,
) -> GenerationBackend:
    """Build the backend a run asks for. ``adapter`` is a PEFT adapter directory to apply."""
    from refine_af.models import (
        choose_placement,
        load_causal_lm,
        load_tokenizer,
        merge_adapter,
        resolve_model_path,
    )

    placement = choose_placement(device, dtype)
    if kind == "vllm" and not vllm_usable(placement.device):
        raise UserError("run.generation_backend is 'vllm' but vLLM is not installed or no GPU")
    path = resolve_model_path(model_path)
    if kind == "vllm" or (kind == "auto" and vllm_usable(placement.device)):
        if adapter is not None:
            path = str(merge_adapter(path, adapter))
        return VLLMBackend(path, seed=seed, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = load_causal_lm(path, placement, trust_remote_code)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    return TransformersBackend(model, tokenizer, batch_size=batch_size)
