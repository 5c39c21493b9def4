"""Text generation behind one small interface: transformers by default, vLLM when installed.

Stages build prompt strings (chat template already applied) and ask a backend for completions;
they never touch ``model.generate`` themselves, so the paper-scale path (vLLM on a GPU) and the
CPU path share every line of stage logic.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
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


@dataclass(frozen=True)
class Completion:
    text: str  # the new text, cut before the first stop string
    finish_reason: FinishReason  # "length" when the token limit cut it off
    num_tokens: int  # new tokens produced (up to and including the stop)


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
    because ``generate`` keeps every row of a batch in every forward pass until the *last* row is
    done. With the ``"\\n\\n"`` stop of stage 1 most rows end long before the slowest one, so
    ``generate`` spends most of its time on rows whose output is already thrown away. The loop here:

    * drops a row from the batch (and from the KV cache) as soon as it emits EOS, a stop string or
      its last allowed token, so each step costs only the rows still running;
    * pre-fills prompts in groups of similar length (prompts sorted longest first, a group ends
      when padding would exceed ``max_prefill_padding`` of its tokens or ``prefill_tokens``), so
      the prefill (a large share of the compute for 150-300 token prompts) wastes little on padding,
      then joins the groups' caches, left-padded, into one batch for decoding;
    * asks for the logits of the last position only (``logits_to_keep=1``) and keeps the
      presence-penalty mask incrementally instead of rebuilding it from all ids every step.

    Semantics are ``generate``'s: the same position ids (cumsum of the attention mask), the same
    logits pipeline (presence penalty, then temperature, top-k from the model's generation config
    or transformers' default 50, top-p), ``torch.multinomial`` sampling / ``argmax`` for greedy,
    stop on any of the generation config's EOS ids. Greedy output equals ``generate``'s (tested).
    Seeded sampling is reproducible; it draws differently from ``generate`` once a row has ended
    (``generate`` keeps sampling the finished rows). ``fast=False`` calls ``model.generate``.
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
    ) -> None:
        if batch_size < 1:
            raise UserError(f"generation batch size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.fast = fast
        self.prefill_tokens = prefill_tokens
        self.max_prefill_padding = max_prefill_padding

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        import torch

        all_ids = self.tokenizer(list(prompts))["input_ids"]
        order = sorted(range(len(prompts)), key=lambda i: -len(all_ids[i]))
        results: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            with torch.inference_mode():
                if self.fast:
                    new_tokens = self._decode_loop([all_ids[i] for i in batch], params)
                else:
                    new_tokens = self._reference_generate([prompts[i] for i in batch], params)
            for row, index in enumerate(batch):
                results[index] = self._completion(new_tokens[row], params)
        return [r for r in results if r is not None]

    # -- the reference path: plain ``model.generate`` ------------------------------------------

    def _reference_generate(self, prompts: list[str], params: SamplingParams) -> list[list[int]]:
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True).to(self.model.device)
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": params.temperature, "top_p": params.top_p}
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
        config = getattr(self.model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}

    def _warpers(self, params: SamplingParams) -> list[Any]:
        """``generate``'s sampling warpers, in its order (after the presence penalty)."""
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        warpers: list[Any] = []
        if params.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(params.temperature))
        config = getattr(self.model, "generation_config", None)
        top_k = getattr(config, "top_k", None)
        top_k = 50 if top_k is None else top_k  # transformers' default when a model sets none
        if top_k:
            warpers.append(TopKLogitsWarper(top_k=top_k))
        if params.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=params.top_p))
        return warpers

    def _prefill(self, rows: list[list[int]]) -> tuple[Any, Any, Any]:
        """Run the prompts (longest first) through the model; return logits, cache, mask.

        Rows are pre-filled in groups of similar length and the groups' caches joined, left
        padded, into one cache over the longest prompt.
        """
        import torch
        from transformers import DynamicCache

        device = self.model.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        groups: list[list[int]] = []
        for row, ids in enumerate(rows):
            if groups:
                group = groups[-1]
                width = len(rows[group[0]])  # the longest in the group: rows come sorted
                padded = width * (len(group) + 1)
                real = sum(len(rows[r]) for r in group) + len(ids)
                if padded <= self.prefill_tokens and padded - real <= self.max_prefill_padding * (
                    padded
                ):
                    group.append(row)
                    continue
            groups.append([row])

        width = max(len(ids) for ids in rows)
        logits, masks, layers = [], [], []
        for group in groups:
            group_width = len(rows[group[0]])
            input_ids = torch.full((len(group), group_width), pad, dtype=torch.long)
            mask = torch.zeros((len(group), group_width), dtype=torch.long)
            for j, row in enumerate(group):
                n = len(rows[row])
                if n:
                    input_ids[j, group_width - n :] = torch.tensor(rows[row])
                    mask[j, group_width - n :] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            # generate's position ids: count real tokens, padding at 0.
            positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
            cache = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits.append(out.logits[:, -1].to(dtype=torch.float32))
            if len(groups) == 1:
                return logits[0], cache, mask
            extra = width - group_width
            masks.append(torch.nn.functional.pad(mask, (extra, 0)))
            layers.append(
                [
                    (
                        torch.nn.functional.pad(layer.keys, (0, 0, extra, 0)),
                        torch.nn.functional.pad(layer.values, (0, 0, extra, 0)),
                    )
                    for layer in cache.layers
                ]
            )
        joined = [
            (torch.cat([g[i][0] for g in layers]), torch.cat([g[i][1] for g in layers]))
            for i in range(len(layers[0]))
        ]
        cache = DynamicCache(ddp_cache_data=joined, config=self.model.config)
        return torch.cat(logits), cache, torch.cat(masks)

    def _decode_loop(self, rows: list[list[int]], params: SamplingParams) -> list[list[int]]:
        """New token ids per row (ending with the EOS id when EOS ended it)."""
        import torch

        if params.max_new_tokens < 1:
            return [[] for _ in rows]
        device = self.model.device
        eos_ids = self._eos_ids()
        stops = [s for s in params.stop if s]
        # A stop string spans at most 4 tokens per character (byte-level BPE), plus slack.
        window = 4 * max((len(s) for s in stops), default=0) + 4
        sample = params.temperature > 0
        warpers = self._warpers(params) if sample else []

        logits, cache, mask = self._prefill(rows)
        positions = (mask.sum(-1, keepdim=True) - 1).clamp(min=0)
        used = None
        if params.presence_penalty:
            used = torch.zeros(logits.shape, dtype=torch.bool, device=device)
        generated: list[list[int]] = [[] for _ in rows]
        active = list(range(len(rows)))  # original row of each row still in the batch
        for _ in range(params.max_new_tokens):
            scores = logits
            if used is not None:
                scores = scores - params.presence_penalty * used.to(scores.dtype)
            if sample:
                for warper in warpers:
                    scores = warper(None, scores)
                probs = torch.nn.functional.softmax(scores, dim=-1)
                tokens = torch.multinomial(probs, num_samples=1).squeeze(1)
            else:
                tokens = torch.argmax(scores, dim=-1)

            keep: list[int] = []
            for j, (row, token) in enumerate(zip(active, tokens.tolist(), strict=True)):
                sequence = generated[row]
                sequence.append(token)
                if token in eos_ids or len(sequence) >= params.max_new_tokens:
                    continue
                if stops:
                    tail = self.tokenizer.decode(sequence[-window:])
                    if any(s in tail for s in stops):
                        continue
                keep.append(j)
            if not keep:
                break
            if len(keep) < len(active):
                # Finished rows leave the batch: later steps cost only the rows still running.
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, positions, tokens = mask[index], positions[index], tokens[index]
                if used is not None:
                    used = used[index]
                active = [active[j] for j in keep]
            if used is not None:
                used[torch.arange(len(active), device=device), tokens] = True
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
            positions = positions + 1
            out = self.model(
                input_ids=tokens[:, None],
                attention_mask=mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            logits = out.logits[:, -1].to(dtype=torch.float32)
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
