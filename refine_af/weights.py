"""Weights without code: safetensors as they are, ``pytorch_model.bin`` converted once.

The project's rule is that no code runs from a weight file. Safetensors holds only tensors and is
loaded as it is. A ``pytorch_model.bin`` is a pickle, and an ordinary ``torch.load`` of a pickle
can run anything the file asks for; some models (UniEval, OpenAssistant's reward model) are
published only that way. Such a file is therefore read only by torch's weights-only unpickler
(``torch.load(..., weights_only=True)``), which rebuilds tensors and plain containers and refuses
every other global instead of calling it. Every value must then be a tensor (a state dict);
anything else is refused with one line. The tensors are written once as safetensors into
``cache_dir()/converted/<key>``, next to copies of the config and tokenizer files (no other
pickle, no code), so every later load reads only safetensors.

Tensors that share storage (T5 stores ``shared``, both ``embed_tokens`` and ``lm_head`` as one
matrix) are written as separate copies: safetensors refuses aliases, and keeping every name means
transformers finds each key whatever its tying rules are, then ties them again itself.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refine_af.errors import UserError, one_line
from refine_af.storage import atomic_directory, partial_path, write_json_atomic

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
MANIFEST = "converted_from.json"
_BIN_SHARD = re.compile(r"^pytorch_model-(\d{5})-of-(\d{5})\.bin$")
# What travels with converted weights: configuration and tokenizer data. ".model" is a
# SentencePiece protobuf, not a pickle; code (*.py) and every other binary stay behind.
_COMPANION_SUFFIXES = (".json", ".txt", ".model", ".jinja")


def weight_format(folder: Path) -> str | None:
    """``"safetensors"``, ``"bin"`` or None: which weights a model directory holds."""
    if (folder / SAFE_WEIGHTS).is_file() or (folder / SAFE_INDEX).is_file():
        return "safetensors"
    if any(folder.glob("*.safetensors")):
        return "safetensors"
    if (folder / BIN_WEIGHTS).is_file() or (folder / BIN_INDEX).is_file():
        return "bin"
    if any(_BIN_SHARD.match(path.name) for path in folder.glob("pytorch_model-*.bin")):
        return "bin"
    return None


def bin_files(folder: Path) -> list[Path]:
    """The ``.bin`` files of a model directory: one file, or the shards its index names."""
    index = folder / BIN_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
            raise UserError(
                f"{index} is not a valid weight index (no weight_map): re-download the model"
            ) from error
        # The index is data from the Hub: only plain shard names in this folder are read.
        bad = [name for name in names if not isinstance(name, str) or not _BIN_SHARD.match(name)]
        if bad:
            raise UserError(
                f"{index} names {bad[0]!r}, not a pytorch_model-XXXXX-of-YYYYY.bin shard in its "
                "folder: re-download the model"
            )
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise UserError(f"{folder} lacks {missing[0]} named by {BIN_INDEX}: re-download it")
        return [folder / name for name in names]
    if (folder / BIN_WEIGHTS).is_file():
        return [folder / BIN_WEIGHTS]
    shards = sorted(
        path for path in folder.glob("pytorch_model-*.bin") if _BIN_SHARD.match(path.name)
    )
    if shards:
        return shards
    raise UserError(f"{folder} holds no pytorch_model.bin: give a model directory with weights")


def _refusal_reason(error: BaseException) -> str:
    """The line of torch's weights-only refusal that names what the file asked for."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line or "WeightsUnpickler error" in line:
            return line
    return lines[-1] if lines else type(error).__name__


def read_bin(path: Path) -> dict[str, Any]:
    """A ``.bin`` state dict read by the weights-only unpickler; anything but tensors is refused."""
    import torch

    try:
        try:
            # mmap keeps a multi-GB checkpoint out of memory until each tensor is written.
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            # Files from torch < 1.6 (not zip archives) cannot be memory-mapped.
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(
            f"refused {path}: it holds objects other than tensors, which could run code when "
            f"unpickled ({_refusal_reason(error)}); use a safetensors copy of the model"
        ) from error
    except Exception as error:  # truncated, not a torch file, unreadable
        raise UserError(
            f"cannot read {path} as PyTorch weights ({one_line(error)[:200]}): "
            "re-download the model or use a safetensors copy"
        ) from error
    if not isinstance(state, Mapping):
        raise UserError(
            f"refused {path}: it holds a {type(state).__name__}, not a state dict of tensors; "
            "use a safetensors copy of the model"
        )
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise UserError(
                f"refused {path}: entry {str(name)[:80]!r} is a {type(value).__name__}, not a "
                "tensor (only a plain state dict is converted); use a safetensors copy of the model"
            )
    return dict(state)


def unshared(state: Mapping[str, Any]) -> dict[str, Any]:
    """The same tensors, each owning its whole storage, contiguous: what safetensors accepts.

    The first tensor that covers a storage exactly keeps it; every alias, view or slice of a
    storage is copied. Values are unchanged.
    """
    import torch

    kept: set[tuple[str, int]] = set()
    result: dict[str, Any] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr())
        whole = (
            storage.nbytes() > 0
            and tensor.is_contiguous()
            and tensor.storage_offset() == 0
            and tensor.numel() * tensor.element_size() == storage.nbytes()
        )
        if whole and key not in kept:
            kept.add(key)
            result[name] = tensor
        else:
            result[name] = tensor.clone(memory_format=torch.contiguous_format)
    return result


def _source_label(folder: Path) -> str:
    """A readable name for the cache folder: the Hub repository or the directory's name."""
    folder = folder.resolve()
    name = folder.parent.parent.name if folder.parent.name == "snapshots" else folder.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")[:60] or "model"


def converted_dir(folder: Path) -> Path:
    """Where the safetensors copy of ``folder``'s ``.bin`` weights lives (or will live).

    The key covers the folder's path and each weight file's name, size and modification time,
    so a re-downloaded or replaced checkpoint is converted again.
    """
    from refine_af.models import cache_dir

    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in bin_files(folder):
        stat = path.stat()
        digest.update(f"|{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return cache_dir() / "converted" / f"{_source_label(folder)}-{digest.hexdigest()[:16]}"


def _save_safetensors(state: Mapping[str, Any], path: Path) -> None:
    from safetensors.torch import save_file

    # transformers reads the "format" metadata to know these are PyTorch tensors.
    save_file(unshared(state), str(path), metadata={"format": "pt"})


def _write_converted(folder: Path, sources: list[Path], partial: Path) -> None:
    """Fill ``partial`` with safetensors of ``sources`` and ``folder``'s config/tokenizer files."""
    if len(sources) == 1:
        _save_safetensors(read_bin(sources[0]), partial / SAFE_WEIGHTS)
        written = [SAFE_WEIGHTS]
    else:
        weight_map: dict[str, str] = {}
        written = []
        total = 0
        for number, source in enumerate(sources, start=1):
            state = read_bin(source)  # one shard in memory at a time
            name = f"model-{number:05d}-of-{len(sources):05d}.safetensors"
            _save_safetensors(state, partial / name)
            total += sum(t.numel() * t.element_size() for t in state.values())
            weight_map.update(dict.fromkeys(state, name))
            written.append(name)
            del state
        write_json_atomic(
            partial / SAFE_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map}
        )
    copied = []
    for path in sorted(folder.iterdir()):
        if (
            path.is_file()
            and path.name.endswith(_COMPANION_SUFFIXES)
            and path.name != BIN_INDEX
            and not path.name.startswith(".")
        ):
            shutil.copyfile(path, partial / path.name)  # follows Hub symlinks to the blob
            copied.append(path.name)
    # Written last: its presence marks a finished conversion.
    write_json_atomic(
        partial / MANIFEST,
        {
            "source": str(folder.resolve()),
            "weights": [p.name for p in sources],
            "written": written,
            "copied": copied,
        },
    )


def convert_bin_folder(folder: Path) -> Path:
    """Convert ``folder``'s ``.bin`` weights to safetensors once; return the converted folder.

    A refused or unreadable file (even a later shard) leaves no converted folder behind.
    """
    from filelock import FileLock

    target = converted_dir(folder)
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Every training process (accelerate launch) loads its own scorers: one converts while the
    # others wait, then they all read its result.
    with FileLock(str(target.parent / f"{target.name}.lock")):
        if not (target / MANIFEST).is_file():
            try:
                with atomic_directory(target) as partial:
                    _write_converted(folder, bin_files(folder), partial)
            except BaseException:
                # Shards converted before a refused one are not worth keeping.
                shutil.rmtree(partial_path(target), ignore_errors=True)
                raise
    return target


def ensure_safetensors(folder: Path) -> Path:
    """A directory with the same model in safetensors: ``folder`` itself, or its converted copy."""
    kind = weight_format(folder)
    if kind == "safetensors":
        return folder
    if kind == "bin":
        return convert_bin_folder(folder)
    raise UserError(
        f"{folder} holds no model weights (no *.safetensors, no pytorch_model.bin): give a "
        "directory written by save_pretrained"
    )
