"""Shared fixtures: the embedded model (loaded once) and a tiny random model for fast mechanics tests."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
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


# --------------------------------------------------------------------------- a real vLLM server
# A real vLLM server for the remote-backend tests (tests/vllm, tests/server): started once per session,
# on first use, and stopped at the end.
#
# - The server runs from ``./.venv-vllm`` (``bash scripts/setup.sh --vllm``) and serves the embedded
#   SmolLM2 model as ``smollm2`` on a free port of 127.0.0.1, logging to ``<pytest tmp>/vllm/server.log``.
# - Without ``.venv-vllm`` the tests are skipped, unless ``DEAL_REQUIRE_VLLM=1`` (CI sets it), where a
#   missing venv fails them: CI never passes by skipping the real server.
# - ``DEAL_VLLM_URL=http://127.0.0.1:PORT`` reuses a server already running (started e.g. with
#   ``.venv/bin/python scripts/vllm_server.py``) instead of starting one; start-up takes minutes.

LAUNCHER = Path(__file__).resolve().parent.parent / "scripts" / "vllm_server.py"


def _launcher() -> ModuleType:
    """``scripts/vllm_server.py``, shared with the benchmarks (a script, not part of the package)."""
    name = "deal_vllm_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LAUNCHER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _required() -> bool:
    return os.environ.get("DEAL_REQUIRE_VLLM", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (no ``/v1``) of a vLLM server serving the embedded SmolLM2 model as ``smollm2``."""
    running = os.environ.get("DEAL_VLLM_URL")
    if running:
        yield running.rstrip("/").removesuffix("/v1")
        return
    launcher = _launcher()
    python = launcher.vllm_python()
    if not python.exists():
        reason = f"{python} is missing: `bash scripts/setup.sh --vllm` creates it"
        if _required():
            pytest.fail(f"DEAL_REQUIRE_VLLM is set but {reason}")
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        with launcher.vllm_server(log_path=log) as url:
            yield url
    except launcher.VLLMServerError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def vllm_v1(vllm_server: str) -> str:
    """The OpenAI-compatible API root: ``BASE/v1``."""
    return vllm_server + "/v1"
