"""pytorch_model.bin is read only by torch's weights-only unpickler and converted once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from refine_af.errors import UserError
from refine_af.weights import (
    MANIFEST,
    SAFE_INDEX,
    SAFE_WEIGHTS,
    converted_dir,
    ensure_safetensors,
    read_bin,
    unshared,
    weight_format,
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Conversions go to a per-test cache, never the user's."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("REFINEAF_CACHE", str(cache))
    return cache


class LoadSpy:
    """Counts torch.load calls while letting each one run for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[object, dict]] = []
        self._load = torch.load
        monkeypatch.setattr(torch, "load", self)

    def __call__(self, *args, **kwargs):
        self.calls.append((args[0] if args else kwargs.get("f"), kwargs))
        return self._load(*args, **kwargs)


class WritesMarker:
    """A pickle payload: unpickling it calls os.mkdir(marker)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def assert_one_line(error: pytest.ExceptionInfo[UserError]) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


# ---------------------------------------------------------------------------------------------
# Conversion.


def test_unieval_bin_converted_once_with_tied_embeddings(unieval_standin, monkeypatch):
    from safetensors.torch import load_file
    from transformers import T5ForConditionalGeneration

    original = torch.load(unieval_standin / "pytorch_model.bin", weights_only=True)
    shared = original["shared.weight"]
    # The published layout really has aliases (else this test would not test them).
    assert (
        original["lm_head.weight"].untyped_storage().data_ptr()
        == shared.untyped_storage().data_ptr()
    )

    spy = LoadSpy(monkeypatch)
    converted = ensure_safetensors(unieval_standin)
    assert converted != unieval_standin and converted == converted_dir(unieval_standin)
    assert [kwargs.get("weights_only") for _, kwargs in spy.calls] == [True]
    names = sorted(p.name for p in converted.iterdir())
    assert names == sorted(
        [
            "config.json",
            MANIFEST,
            SAFE_WEIGHTS,
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]
    )
    written = load_file(converted / SAFE_WEIGHTS)
    assert written.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(written[name], tensor), name

    # transformers loads every weight and ties the embeddings again itself.
    model = T5ForConditionalGeneration.from_pretrained(converted, use_safetensors=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    assert model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()

    # The second time, the cached safetensors are used: no pickle is opened at all.
    spy.calls.clear()
    assert ensure_safetensors(unieval_standin) == converted
    assert spy.calls == []


def test_safetensors_directory_is_used_as_it_is(plain_llama_policy, monkeypatch):
    spy = LoadSpy(monkeypatch)
    assert weight_format(plain_llama_policy) == "safetensors"
    assert ensure_safetensors(plain_llama_policy) == plain_llama_policy
    assert spy.calls == []


def test_sharded_bin_converted_to_sharded_safetensors(unieval_standin, tmp_path):
    from transformers import T5ForConditionalGeneration

    state = torch.load(unieval_standin / "pytorch_model.bin", weights_only=True)
    folder = tmp_path / "sharded"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(unieval_standin / name, folder / name)
    keys = sorted(state)
    shards = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    for file, names in shards.items():
        torch.save({k: state[k].clone() for k in names}, folder / file)
    index = {"weight_map": {k: file for file, names in shards.items() for k in names}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))

    converted = ensure_safetensors(folder)
    safe_index = json.loads((converted / SAFE_INDEX).read_text())
    assert sorted(set(safe_index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert not (converted / "pytorch_model.bin.index.json").exists()
    model = T5ForConditionalGeneration.from_pretrained(converted, use_safetensors=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_only_config_and_tokenizer_files_travel(oasst_rm_standin, tmp_path):
    folder = copy_model(oasst_rm_standin, tmp_path / "rm")
    torch.save({"args": WritesMarker(tmp_path / "never")}, folder / "training_args.bin")
    (folder / "modeling_reward.py").write_text("raise SystemExit('code from a model folder')\n")
    (folder / "optimizer.pt").write_bytes(b"not copied")
    converted = ensure_safetensors(folder)
    names = {p.name for p in converted.iterdir()}
    assert names == {
        "config.json",
        MANIFEST,
        SAFE_WEIGHTS,
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    assert not (tmp_path / "never").exists()


def test_concurrent_loads_convert_once(oasst_rm_standin, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    spy = LoadSpy(monkeypatch)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: ensure_safetensors(oasst_rm_standin), range(3)))
    assert len(set(results)) == 1 and (results[0] / SAFE_WEIGHTS).is_file()
    assert len(spy.calls) == 1  # one converted while the others waited for its result


def test_unshared_copies_aliases_and_views_only():
    base = torch.arange(12.0)
    state = {"a": base, "b": base, "view": base[2:6], "t": torch.ones(2, 3).t()}
    out = unshared(state)
    assert out["a"] is not None and out["a"].data_ptr() == base.data_ptr()  # first owner kept
    pointers = {t.untyped_storage().data_ptr() for t in out.values()}
    assert len(pointers) == 4
    assert all(t.is_contiguous() for t in out.values())
    for name in state:
        assert torch.equal(out[name], state[name])


# ---------------------------------------------------------------------------------------------
# Refusals: one line each, nothing runs, nothing half-written.


def test_malicious_pickle_is_refused_and_never_runs(unieval_standin, tmp_path):
    marker = tmp_path / "payload-ran"
    folder = copy_model(unieval_standin, tmp_path / "evil")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["shared.weight"] = WritesMarker(marker)
    torch.save(state, folder / "pytorch_model.bin")

    with pytest.raises(UserError) as error:
        ensure_safetensors(folder)
    message = assert_one_line(error)
    assert "refused" in message and "posix.mkdir" in message
    assert not marker.exists()
    assert not converted_dir(folder).exists()

    # The file is live: a plain unpickler would have run the payload.
    torch.load(folder / "pytorch_model.bin", weights_only=False)
    assert marker.exists()


def test_bin_holding_a_non_tensor_is_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": torch.zeros(2), "step": 3}, path)
    with pytest.raises(UserError) as error:
        read_bin(path)
    assert "'step' is a int, not a tensor" in assert_one_line(error)

    torch.save([torch.zeros(2)], path)
    with pytest.raises(UserError) as error:
        read_bin(path)
    assert "holds a list, not a state dict" in assert_one_line(error)

    path.write_bytes(b"this is not a torch file")
    with pytest.raises(UserError) as error:
        read_bin(path)
    assert "cannot read" in assert_one_line(error)


def test_a_bad_later_shard_leaves_no_conversion(unieval_standin, tmp_path):
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(unieval_standin / "config.json", folder / "config.json")
    torch.save({"a": torch.zeros(2)}, folder / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": torch.zeros(2), "note": "x"}, folder / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(UserError) as error:
        ensure_safetensors(folder)
    assert "pytorch_model-00002-of-00002.bin" in assert_one_line(error)
    target = converted_dir(folder)
    assert not target.exists() and not target.with_name(target.name + ".partial").exists()


def test_index_naming_files_outside_the_folder_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    torch.save({"a": torch.zeros(2)}, tmp_path / "elsewhere.bin")
    index = {"weight_map": {"a": "../elsewhere.bin"}}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError) as error:
        ensure_safetensors(folder)
    assert "../elsewhere.bin" in assert_one_line(error)


def test_folder_without_weights_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError) as error:
        ensure_safetensors(tmp_path)
    assert "holds no model weights" in assert_one_line(error)
