"""Shared fixtures: the embedded model (loaded once) and a tiny random model for fast mechanics tests."""

from __future__ import annotations

import pytest
import torch

from shared_core.models import LocalModel, load_model


@pytest.fixture(scope="session")
def smollm2() -> LocalModel:
    """The embedded chat model, SmolLM2-135M-Instruct."""
    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2: LocalModel) -> str:
    """A 2-layer random Llama with the SmolLM2 tokenizer, saved as safetensors."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = smollm2.tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: str) -> LocalModel:
    return load_model(tiny_model_dir)
