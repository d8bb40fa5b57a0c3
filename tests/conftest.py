"""Shared fixtures: the embedded model (loaded once) and a tiny random model for fast mechanics tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from shared_core.models import LocalModel, load_model

# The suite loads many small models; keep the session's shared fixtures (the embedded model) in the
# process-wide cache rather than evicting them at the default limit of 6 loaded models.
os.environ.setdefault("DEAL_MAX_MODELS", "64")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Decodes with one torch thread in a module, restoring the setting after it.

    On shared 2-core machines torch's second intra-op thread spin-waits whenever the other core is busy:
    20 greedy SmolLM2 tokens took 10-16 s with 2 threads and 1.7-1.9 s with 1 while other processes ran
    (token-by-token decoding is many small ops, where thread hand-offs dominate). Modules of many tiny
    forwards opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def smollm2() -> LocalModel:
    """The embedded chat model, SmolLM2-135M-Instruct."""
    return load_model("smollm2")


SaveTinyLlama = Callable[..., str]


@pytest.fixture(scope="session")
def save_tiny_llama() -> SaveTinyLlama:
    """Saves a seeded random 2-layer, 64-wide Llama with a given tokenizer as safetensors; returns the folder.

    ``save(folder, tokenizer, seed=0, model_class=LlamaForCausalLM, edit=None, **config)``: ``config``
    overrides the shared config (``max_position_embeddings=2048``, ``num_labels=3`` ...), ``edit``
    changes the weights before saving. Every tiny test model is built here, so they differ only where
    a test needs them to.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    def save(folder: str | Path, tokenizer: Any, *, seed: int = 0, model_class: Any = LlamaForCausalLM,
             edit: Callable[[Any], None] | None = None, **config: Any) -> str:
        settings = {
            "vocab_size": len(tokenizer), "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **config,
        }
        torch.manual_seed(seed)
        model = model_class(LlamaConfig(**settings))
        if edit is not None:
            with torch.no_grad():
                edit(model)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return str(folder)

    return save


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2: LocalModel,
                   save_tiny_llama: SaveTinyLlama) -> str:
    """A 2-layer random Llama with the SmolLM2 tokenizer, saved as safetensors."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2.tokenizer)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: str) -> LocalModel:
    return load_model(tiny_model_dir)
