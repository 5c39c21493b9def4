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
    """Batched ``generate`` with left padding, prompts grouped by length to waste less padding."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise UserError(f"generation batch size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        import torch

        lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        results: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            encoded = self.tokenizer(
                [prompts[i] for i in batch], return_tensors="pt", padding=True
            ).to(self.model.device)
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
            with torch.inference_mode():
                output = self.model.generate(
                    **encoded,
                    max_new_tokens=params.max_new_tokens,
                    stop_strings=list(params.stop) or None,
                    tokenizer=self.tokenizer,
                    pad_token_id=self.tokenizer.pad_token_id,
                    **sampling,
                )
            new_tokens = output[:, encoded["input_ids"].shape[1] :]
            for row, index in enumerate(batch):
                results[index] = self._completion(new_tokens[row].tolist(), params)
        return [r for r in results if r is not None]

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
