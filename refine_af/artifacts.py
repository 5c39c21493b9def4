"""Files handed to a command, checked before any model loads: one line naming the file and the fix.

A model folder or a LoRA adapter reaches a command from the user (an eval row, ``run.model``) or
from an earlier stage, and either may be broken: cut short by a kill or a full disk during a
copy, a pickle that torch's weights-only loader refuses, a missing ``adapter_config.json``, an
adapter trained on another base model. Loaded as they are, each ends deep inside transformers or
PEFT with a long traceback, sometimes after hours of other work. These checks read only what
decides whether the load can work, without loading a model:

* JSON files (``config.json``, ``adapter_config.json``, a weight index) must parse as objects;
* a safetensors file must open (its header is read, and safetensors checks that the file is as
  long as the header says, so a file cut short is found);
* a ``.bin`` adapter is read by torch's weights-only unpickler, and every value must be a tensor;
* an adapter's LoRA matrices must fit the base model's layers, from the shapes in the two
  safetensors headers (no weights are read).
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

from refine_af.errors import UserError, one_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_SAFETENSORS = "adapter_model.safetensors"
ADAPTER_BIN = "adapter_model.bin"
SAFE_INDEX = "model.safetensors.index.json"
# PEFT saves an adapter's tensors under the wrapped model's names.
_PEFT_PREFIX = "base_model.model."
_SMALL_JSON = ("config.json", "generation_config.json", "tokenizer_config.json", SAFE_INDEX)


def read_json_object(path: Path, fix: str) -> dict[str, Any]:
    """A JSON file that must hold an object; missing or damaged is one line with ``fix``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise UserError(f"{path} does not exist: {fix}") from error
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path} ({one_line(error)}): {fix}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        where = f"line {error.lineno} column {error.colno}"
        raise UserError(
            f"{path} is not valid JSON ({error.msg} at {where}; cut short?): {fix}"
        ) from error
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a JSON {type(data).__name__}, not an object: {fix}")
    return data


def safetensors_shapes(path: Path, fix: str) -> dict[str, list[int]]:
    """Every tensor's shape from a safetensors header; a damaged or cut-short file is one line."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            names = list(handle.keys())
            return {name: list(handle.get_slice(name).get_shape()) for name in names}
    except FileNotFoundError as error:
        raise UserError(f"{path} does not exist: {fix}") from error
    except Exception as error:  # SafetensorError: header too small, incomplete, not safetensors
        raise UserError(
            f"{path} is damaged or cut short ({one_line(error)[:160]}): {fix}"
        ) from error


def model_weight_files(folder: Path) -> list[Path]:
    """A model directory's safetensors files: those its index names, else model*.safetensors."""
    index = folder / SAFE_INDEX
    if index.is_file():
        fix = "download or save the model again"
        weight_map = read_json_object(index, fix).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index} has no weight_map: {fix}")
        return [folder / name for name in sorted(set(map(str, weight_map.values())))]
    return sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))


def check_model_dir(folder: Path) -> None:
    """A local model directory's small JSON files parse and its safetensors files are whole."""
    fix = (
        f"download or save the model again (save_pretrained) into {folder}, or give another "
        "model directory"
    )
    for name in _SMALL_JSON:
        if (folder / name).is_file() or name == "config.json":
            read_json_object(folder / name, fix)
    for path in model_weight_files(folder):
        safetensors_shapes(path, fix)


def _adapter_shapes(folder: Path, fix: str) -> dict[str, list[int]]:
    """The shapes of an adapter's tensors, from safetensors or a weights-only ``.bin`` load."""
    if (folder / ADAPTER_SAFETENSORS).exists():
        return safetensors_shapes(folder / ADAPTER_SAFETENSORS, fix)
    path = folder / ADAPTER_BIN
    if not path.exists():
        raise UserError(f"adapter {folder} has no {ADAPTER_SAFETENSORS} (nor {ADAPTER_BIN}): {fix}")
    import torch

    from refine_af.weights import _refusal_reason

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = _refusal_reason(error)
        asked = re.search(r"GLOBAL ([\w.]+)", reason)
        what = f"it asks for {asked.group(1)}" if asked else reason[:120]
        raise UserError(
            f"refused {path}: it holds objects other than tensors, which could run code when "
            f"unpickled ({what}); {fix}"
        ) from error
    except Exception as error:  # cut short, not a torch file
        raise UserError(
            f"{path} is damaged or cut short ({one_line(error)[:160]}): {fix}"
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state.items()
    ):
        raise UserError(f"refused {path}: it is not a state dict of tensors; {fix}")
    return {name: list(value.shape) for name, value in state.items()}


def _base_lookup(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Base weight names, also without their first part: PEFT wraps a model whose saved names
    may or may not carry the architecture's prefix (``model.``, ``transformer.``)."""
    lookup = dict(shapes)
    for name, shape in shapes.items():
        if "." in name:
            lookup.setdefault(name.split(".", 1)[1], shape)
    return lookup


def _expected(name: str) -> tuple[str, str] | None:
    """(module path, role) of a LoRA tensor name, None for another tensor."""
    name = name.removeprefix(_PEFT_PREFIX)
    for suffix, role in (
        (".lora_A.weight", "A"),
        (".lora_B.weight", "B"),
        (".lora_embedding_A", "embedding_A"),
        (".lora_embedding_B", "embedding_B"),
        (".base_layer.weight", "whole"),
    ):
        if name.endswith(suffix):
            return name[: -len(suffix)], role
    return None


def _mismatch(
    adapter: dict[str, list[int]], base: dict[str, list[int]], fan_in_fan_out: bool
) -> str | None:
    """The first LoRA tensor that does not fit the base model, described; None if all fit."""
    lookup = _base_lookup(base)
    for name, shape in sorted(adapter.items()):
        parsed = _expected(name)
        if parsed is None:
            continue
        module, role = parsed
        weight = lookup.get(f"{module}.weight")
        if weight is None:
            if module.split(".")[-1] == "lm_head":
                continue  # tied to the embeddings: the base saves no lm_head of its own
            return f"the base model has no layer {module}"
        out_features, in_features = (weight[-1], weight[0]) if fan_in_fan_out else weight[:2]
        checks = {
            "A": (shape[-1], in_features, "input size"),
            "B": (shape[0], out_features, "output size"),
            "embedding_A": (shape[-1], weight[0], "vocabulary size"),
            "embedding_B": (shape[0], weight[-1], "embedding size"),
        }
        if role == "whole":
            if shape != weight:
                return f"{module} is {shape} in the adapter and {weight} in the base model"
            continue
        got, want, what = checks[role]
        if got != want:
            return f"{module} has {what} {got} in the adapter and {want} in the base model"
    return None


def check_adapter(folder: Path, base_model_dir: str | Path | None, fix: str) -> None:
    """A PEFT adapter folder is whole and fits ``base_model_dir`` (when it has safetensors).

    ``fix`` ends each message: how to get a good adapter in the caller's setting.
    """
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not an adapter folder"
        raise UserError(f"adapter {folder} {what}: {fix}")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise UserError(f"adapter {folder} has no {ADAPTER_CONFIG}: {fix}")
    settings = read_json_object(folder / ADAPTER_CONFIG, fix)
    shapes = _adapter_shapes(folder, fix)
    if base_model_dir is None:
        return
    base_files = model_weight_files(Path(base_model_dir))
    if not base_files:
        return  # .bin-only base models: loaded through their own checks
    base: dict[str, list[int]] = {}
    for path in base_files:
        base.update(safetensors_shapes(path, "download or save the base model again"))
    problem = _mismatch(shapes, base, bool(settings.get("fan_in_fan_out")))
    if problem:
        trained_on = settings.get("base_model_name_or_path")
        origin = f"it was trained on {trained_on}" if trained_on else "trained on another model"
        raise UserError(
            f"adapter {folder} does not fit the base model {base_model_dir} ({problem}; "
            f"{origin}): use the base model it was trained on, or {fix}"
        )
