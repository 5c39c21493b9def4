"""The ``gpt_neox_reward_model`` architecture of OpenAssistant's reward models, as a plain class.

The paper's reward model, ``OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5``, is not a stock
transformers architecture: its ``config.json`` says ``model_type: gpt_neox_reward_model``,
``architectures: [GPTNeoXRewardModel]`` and ``pooling`` (``"last"`` or ``"mean"``), and its
weights are a GPT-NeoX trunk (``gpt_neox.*``) plus ``out_proj``, a ``Linear(hidden, 1)`` with bias
applied to the pooled last hidden state. Open-Assistant registered that class from its own
training code, so ``AutoModelForSequenceClassification`` does not know it and TRL cannot load it
by name. This module defines the same layout in the project's own code (no remote code runs) and
registers it with the Auto classes; :func:`register` is idempotent.

Pooling reads the attention mask, not the pad token, so a row scores the same alone, right-padded
or left-padded (rotary attention depends only on relative positions, so left padding's shift of
every position leaves the trunk's states unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXTokenizer,
)
from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXModel, GPTNeoXPreTrainedModel
from transformers.utils import ModelOutput

MODEL_TYPE = "gpt_neox_reward_model"
POOLING_MODES = ("last", "mean")


@strict
class GPTNeoXRewardModelConfig(GPTNeoXConfig):
    """A GPT-NeoX config plus ``pooling``: which hidden state ``out_proj`` reads."""

    model_type = MODEL_TYPE
    pooling: str = "last"

    def validate_pooling(self) -> None:
        # A typo here would otherwise score every sample from the wrong position, silently.
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling must be one of {list(POOLING_MODES)}, not {self.pooling!r}")


@dataclass
class RewardModelOutput(ModelOutput):
    """``logits``: the reward of each row, shape ``(batch, 1)``."""

    logits: torch.FloatTensor | None = None


def pool_hidden_states(
    hidden_states: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str
) -> torch.Tensor:
    """The ``(batch, hidden)`` vector ``out_proj`` reads: last real token or masked mean."""
    if attention_mask is None:
        return hidden_states[:, -1] if pooling == "last" else hidden_states.mean(dim=1)
    mask = attention_mask.to(hidden_states.dtype)
    if pooling == "mean":
        # clamp: an all-padding row gives a zero vector instead of NaN.
        total = (hidden_states * mask.unsqueeze(-1)).sum(dim=1)
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    # The rightmost position whose mask is 1: right padding puts it before the pads, left
    # padding at the end, so one rule serves both.
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(attention_mask.bool(), positions, -1).amax(dim=1).clamp(min=0)
    return hidden_states[torch.arange(hidden_states.shape[0], device=mask.device), last]


class GPTNeoXRewardModel(GPTNeoXPreTrainedModel):
    """GPT-NeoX trunk (``gpt_neox``) and a scalar head (``out_proj``) on the pooled state."""

    config_class = GPTNeoXRewardModelConfig
    config: GPTNeoXRewardModelConfig

    def __init__(self, config: GPTNeoXRewardModelConfig) -> None:
        super().__init__(config)
        self.gpt_neox = GPTNeoXModel(config)
        self.out_proj = nn.Linear(config.hidden_size, 1)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: object,
    ) -> RewardModelOutput | tuple[torch.Tensor]:
        hidden = self.gpt_neox(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
        ).last_hidden_state
        pooled = pool_hidden_states(hidden, attention_mask, self.config.pooling)
        logits = self.out_proj(pooled)
        if return_dict is False:
            return (logits,)
        return RewardModelOutput(logits=logits)


def register() -> None:
    """Make the Auto classes load ``gpt_neox_reward_model`` directories (safe to call again)."""
    AutoConfig.register(MODEL_TYPE, GPTNeoXRewardModelConfig, exist_ok=True)
    AutoModelForSequenceClassification.register(
        GPTNeoXRewardModelConfig, GPTNeoXRewardModel, exist_ok=True
    )
    # Open-Assistant's tokenizer_config.json names GPTNeoXTokenizer; this covers copies that don't.
    AutoTokenizer.register(
        GPTNeoXRewardModelConfig, tokenizer_class=GPTNeoXTokenizer, exist_ok=True
    )


register()
