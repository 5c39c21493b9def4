"""Stage 3b's padding-free micro-batches: the same loss as padded rows, completion-only labels,
examples still cut at ``sft.max_length``.

The model has large random weights (peaked attention), so a token attending across the boundary
into the previous example would change the loss; the test checks that it would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from refine_af.stages import sft
from refine_af.train_config import load_config


@pytest.fixture(scope="module")
def sharp_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama's architecture and tokenizer, re-drawn with large weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.5
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sharp_llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def _instances(run: Path) -> Path:
    path = run / "instances" / "baseline" / "instances.jsonl"
    path.parent.mkdir(parents=True)
    rows = [
        ("Add one to the number.", "41", "42"),
        ("Name a colour of the sky on a clear summer afternoon.", "", "Blue"),
        ("Translate the sentence into French.", "The cat is on the table.", "Le chat est là."),
        ("Is the review positive or negative?", "I loved every minute of it.", "Positive"),
    ]
    with path.open("w") as handle:
        for i, (instruction, input_text, output) in enumerate(rows):
            record = {"instruction": instruction, "input": input_text, "output": output}
            handle.write(json.dumps({"id": f"g{i}-0", "instruction_id": f"g{i}", **record}) + "\n")
    return path


def _trainer(run: Path, model: Path, text_format: str, *overrides: str) -> Any:
    config = load_config(
        "default",
        [
            f"run.output_dir={run}",
            f"run.model={model}",
            f"sft.text_format={text_format}",
            "sft.max_steps=1",
            *overrides,
        ],
    )
    path = run / "instances" / "baseline" / "instances.jsonl"
    if not path.is_file():
        _instances(run)
    examples = sft.training_examples(path, text_format=text_format)
    return sft.build_trainer(config, examples, run / "ckpt", str(model))


def _loss(trainer: Any, batch: dict[str, Any]) -> float:
    import torch

    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, dict(batch)))


@pytest.mark.parametrize("text_format", ["plain", "chat"])
def test_padding_free_batches_give_the_padded_loss(
    tmp_path: Path, sharp_model: Path, text_format: str
) -> None:
    import torch

    free = _trainer(tmp_path, sharp_model, text_format)
    padded = _trainer(tmp_path, sharp_model, text_format, "sft.padding_free=false")
    rows = [free.train_dataset[i] for i in range(len(free.train_dataset))]
    assert rows == [padded.train_dataset[i] for i in range(len(padded.train_dataset))]

    one_row = free.data_collator(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert one_row["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in one_row
    starts = (one_row["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == [sum(lengths[:i]) for i in range(len(lengths))]
    # Labels: each example's own, end to end (prompt tokens -100, completion tokens trained).
    expected = [label for r in rows for label in r["labels"]]
    assert one_row["labels"][0].tolist() == expected
    assert any(label != -100 for label in expected)

    batch = padded.data_collator(rows)
    assert batch["input_ids"].shape == (len(rows), max(lengths))
    assert _loss(free, one_row) == pytest.approx(_loss(padded, batch), rel=1e-5)

    # The check can fail: one sequence over all examples (attention crossing them) differs.
    crossing = dict(one_row, position_ids=torch.arange(sum(lengths))[None])
    assert _loss(free, crossing) != pytest.approx(_loss(padded, batch), rel=1e-3)


def test_padding_free_rows_are_cut_at_max_length(tmp_path: Path, sharp_model: Path) -> None:
    whole = _trainer(tmp_path, sharp_model, "plain", "sft.max_length=256")
    lengths = [len(whole.train_dataset[i]["input_ids"]) for i in range(len(whole.train_dataset))]
    limit = max(lengths) - 2  # cuts the longest example (the French one) inside its completion
    cut = _trainer(tmp_path, sharp_model, "plain", f"sft.max_length={limit}")
    rows = [cut.train_dataset[i] for i in range(len(cut.train_dataset))]
    assert [len(r["input_ids"]) for r in rows] == [min(n, limit) for n in lengths]
    assert min(lengths) < limit < max(lengths)
    assert cut.data_collator(rows)["input_ids"].shape == (1, sum(min(n, limit) for n in lengths))
