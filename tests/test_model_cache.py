"""Loading models: the KV-cache argument of any transformers release, the process-wide model cache, the hub.

* ``cache_argument`` picks the name a model's ``forward`` declares (``cache`` from transformers 5.24,
  ``past_key_values`` before), so a model of either kind decodes the same tokens with every strategy;
* the model cache key holds everything that changes what is loaded (``use_safetensors``, ``revision``,
  ``dtype``, ``device``), the cache is an LRU bounded by ``DEAL_MAX_MODELS`` (derived values do not
  count), and a bad ``DEAL_MAX_MODELS`` is a ConfigError before any model work;
* a hub id's ``revision`` is honoured offline (the local hub cache's ``refs``), and the hub
  reachability probe runs once, not once per load.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch

from shared_core import generate, models
from shared_core.cpu_linear import use_small_batch_linear
from shared_core.errors import ConfigError, DealError, ModelLoadError
from shared_core.hf_compat import cache_argument, output_cache
from shared_core.models import LocalModel, cached, cached_models, load_model, resolve_model_source

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def private_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty model cache for one test; the session's loaded models are untouched and back afterwards."""
    monkeypatch.setattr(models, "_CACHE", OrderedDict())
    monkeypatch.setattr(models, "_CACHE_LOCKS", {})


# ---------------------------------------------------------------------------------------- the KV-cache argument


class NewStyle(torch.nn.Module):
    def forward(self, input_ids: Any = None, attention_mask: Any = None, cache: Any = None, **kwargs: Any) -> Any:
        return input_ids


class OldStyle(torch.nn.Module):
    def forward(self, input_ids: Any = None, past_key_values: Any = None, use_cache: bool = False) -> Any:
        return input_ids


class NoCache(torch.nn.Module):
    def forward(self, input_ids: Any = None, **kwargs: Any) -> Any:
        return input_ids


def test_cache_argument_is_the_name_the_forward_declares() -> None:
    assert cache_argument(NewStyle()) == "cache"
    assert cache_argument(OldStyle()) == "past_key_values"
    with pytest.raises(DealError, match="NoCache.forward takes no KV cache argument"):
        cache_argument(NoCache())
    assert output_cache({"logits": 1, "past_key_values": "old"}) == "old"
    assert output_cache({"logits": 1, "cache": "new"}) == "new"


def _old_cache_name_class() -> type:
    """A tiny Llama as transformers < 5.24 shaped it: the KV cache in and out as ``past_key_values``."""
    from transformers import LlamaForCausalLM

    class OldOutput(dict):
        """An output dict with attribute access (transformers 5.24's ModelOutput renames the old field)."""

        def __getattr__(self, name: str) -> Any:
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

    class OldCacheNameLlama(LlamaForCausalLM):
        def forward(self, input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                    past_key_values: Any = None, inputs_embeds: Any = None, use_cache: bool | None = None,
                    logits_to_keep: int = 0, **kwargs: Any) -> OldOutput:
            if "cache" in kwargs:
                raise TypeError("forward() got an unexpected keyword argument 'cache'")
            out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  cache=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                                  logits_to_keep=logits_to_keep, **kwargs)
            return OldOutput(logits=out.logits, past_key_values=out.cache)

    return OldCacheNameLlama


@pytest.fixture(scope="module")
def old_style_model(tiny_model: LocalModel) -> LocalModel:
    """The tiny model's weights behind a forward that only knows the old argument name."""
    model = _old_cache_name_class().from_pretrained(tiny_model.source, dtype=torch.float32).eval()
    use_small_batch_linear(model)
    return dataclasses.replace(tiny_model, model=model)


CALLS: list[dict[str, Any]] = [
    {"strategy": "greedy"},
    {"strategy": "sample", "temperature": 0.8, "seed": 2},
    {"strategy": "args", "reward": {"type": "keywords", "words": ["sun"]}, "top_k": 4},
    {"strategy": "deal", "reward": {"type": "keywords", "words": ["sun"]}, "top_k": 3, "lookahead": 3},
    {"strategy": "best_of_n", "reward": {"type": "length", "max_words": 3}, "n": 3, "seed": 1},
]


@pytest.mark.parametrize("kwargs", CALLS, ids=[c["strategy"] for c in CALLS])
def test_a_model_with_the_old_cache_name_decodes_the_same_tokens(tiny_model: LocalModel, old_style_model: LocalModel,
                                                                 kwargs: dict[str, Any]) -> None:
    assert cache_argument(old_style_model.model) == "past_key_values"
    assert cache_argument(tiny_model.model) == "cache"
    new = generate(tiny_model, "hello", max_new_tokens=10, **kwargs)
    old = generate(old_style_model, "hello", max_new_tokens=10, **kwargs)
    assert old.token_ids == new.token_ids and old.text == new.text
    assert old.stats.forward_passes == new.stats.forward_passes


def test_a_batch_with_the_old_cache_name_decodes_the_same_tokens(tiny_model: LocalModel,
                                                                 old_style_model: LocalModel) -> None:
    prompts = ["hello", "Tell me about the sun."]
    new = generate(tiny_model, prompts, max_new_tokens=10)
    old = generate(old_style_model, prompts, max_new_tokens=10)
    assert [r.token_ids for r in old] == [r.token_ids for r in new]


# ---------------------------------------------------------------------------------------- the cache key


@pytest.fixture()
def fake_loads(private_cache: None, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Replaces the weight loading with a cheap stand-in that records its arguments."""
    loads: list[tuple[Any, ...]] = []

    def fake_load(name: str, location: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool,
                  revision: str | None, use_safetensors: bool) -> object:
        loads.append((location, str(device), dtype, revision, use_safetensors))
        return object()

    monkeypatch.setattr(models, "_load", fake_load)
    monkeypatch.setattr(models, "resolve_device", lambda device: torch.device("cpu" if device == "auto" else device))
    return loads


@pytest.mark.parametrize("change", [
    {"use_safetensors": False}, {"revision": "v1"}, {"dtype": "bfloat16"}, {"device": "cuda:1"},
], ids=["use_safetensors", "revision", "dtype", "device"])
def test_loads_that_differ_in_one_setting_are_different_entries(tiny_model_dir: str, fake_loads: list,
                                                                change: dict[str, Any]) -> None:
    plain = load_model(tiny_model_dir)
    assert load_model(tiny_model_dir) is plain
    changed = load_model(tiny_model_dir, **change)
    assert changed is not plain and len(fake_loads) == 2
    assert load_model(tiny_model_dir, **change) is changed and len(fake_loads) == 2


def test_real_loads_in_two_dtypes_are_two_models(tiny_model_dir: str, private_cache: None) -> None:
    fp32 = load_model(tiny_model_dir, dtype="float32")
    bf16 = load_model(tiny_model_dir, dtype="bfloat16")
    assert fp32 is not bf16
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert load_model(tiny_model_dir, dtype="bfloat16") is bf16


# ---------------------------------------------------------------------------------------- LRU, DEAL_MAX_MODELS


class Factory:
    def __init__(self) -> None:
        self.built: list[str] = []

    def __call__(self, key: str) -> Any:
        def build() -> str:
            self.built.append(key)
            return f"model {key}"

        return build


def test_the_cache_keeps_the_most_recently_used_models(private_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEAL_MAX_MODELS", "2")
    make = Factory()
    cached("a", make("a"))
    cached("b", make("b"))
    assert cached("a", make("a")) == "model a"  # a hit makes "a" the most recent
    cached("c", make("c"))  # evicts "b", the least recently used
    assert cached_models() == ["a", "c"]
    cached("b", make("b"))  # built again; evicts "a"
    assert cached_models() == ["c", "b"] and make.built == ["a", "b", "c", "b"]


def test_derived_values_do_not_count_toward_the_limit(private_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEAL_MAX_MODELS", "1")
    make = Factory()
    cached("model", make("model"))
    for name in ("path", "probe", "tokenizer-facts"):
        cached(name, make(name), model=False)
    assert cached_models() == ["model"]
    for name in ("model", "path", "probe", "tokenizer-facts"):
        cached(name, make(name), model=name != "model")
    assert make.built == ["model", "path", "probe", "tokenizer-facts"]  # every one still cached
    cached("other", make("other"))
    assert cached_models() == ["other"]
    assert cached("path", make("path"), model=False) == "model path" and make.built.count("path") == 1


@pytest.mark.parametrize("value", ["0", "many", "-3"])
def test_a_bad_model_limit_is_a_config_error_before_any_load(private_cache: None, monkeypatch: pytest.MonkeyPatch,
                                                             value: str) -> None:
    monkeypatch.setenv("DEAL_MAX_MODELS", value)
    make = Factory()
    with pytest.raises(ConfigError, match="DEAL_MAX_MODELS: must be a positive integer"):
        cached("a", make("a"))
    assert make.built == [] and cached_models() == []


# ---------------------------------------------------------------------------------------- the hub, offline


@pytest.fixture()
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """No connection to the hub succeeds; returns the list of attempted connections."""
    attempts: list[tuple[Any, ...]] = []

    def refuse(address: Any, *args: Any, **kwargs: Any) -> Any:
        attempts.append(address)
        raise OSError("network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(models, "_HUB_PROBE", {})  # forget answers of earlier tests
    return attempts


@pytest.fixture()
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: LocalModel, save_tiny_llama) -> Path:
    """A local hub cache holding ``org/name`` at two revisions: ``main`` and the tag ``v1`` (other weights)."""
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--org--name"
    (repo / "refs").mkdir(parents=True)
    for ref, commit, seed in (("main", "a" * 40, 1), ("v1", "b" * 40, 2)):
        (repo / "refs" / ref).write_text(commit)
        save_tiny_llama(repo / "snapshots" / commit, tiny_model.tokenizer, seed=seed)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    return repo


def test_a_revision_is_honoured_offline(local_hub: Path, unreachable_hub: list, private_cache: None) -> None:
    assert resolve_model_source("org/name") == str(local_hub / "snapshots" / ("a" * 40))
    assert resolve_model_source("org/name", revision="v1") == str(local_hub / "snapshots" / ("b" * 40))
    assert resolve_model_source("org/name", revision="b" * 40) == str(local_hub / "snapshots" / ("b" * 40))
    with pytest.raises(ModelLoadError, match="at revision 'v2' is not in the local hub cache"):
        resolve_model_source("org/name", revision="v2")
    main, v1 = load_model("org/name"), load_model("org/name", revision="v1")
    assert v1.source.endswith("b" * 40) and main.source.endswith("a" * 40)
    assert not torch.equal(main.model.lm_head.weight, v1.model.lm_head.weight)


def test_the_hub_probe_runs_once_for_many_loads(unreachable_hub: list, monkeypatch: pytest.MonkeyPatch) -> None:
    for _ in range(3):
        with pytest.raises(ModelLoadError, match="cannot be reached"):
            resolve_model_source("org/missing-model")
    barrier = threading.Barrier(8)
    errors: list[Exception] = []

    def one() -> None:
        barrier.wait(30)
        try:
            resolve_model_source("org/another-missing-model")
        except ModelLoadError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(errors) == 8 and len(unreachable_hub) == 1
    monkeypatch.setattr(models, "HUB_PROBE_TTL", 0.0)  # once the answer is stale, the hub is asked again
    with pytest.raises(ModelLoadError):
        resolve_model_source("org/missing-model")
    assert len(unreachable_hub) == 2

