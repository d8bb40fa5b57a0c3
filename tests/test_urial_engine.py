"""URIAL inside the engine: prompt ids, the cached preamble, stop strings, clean streamed answers, errors."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from shared_core import ConfigError, generate, load_model, stream
from shared_core.decoding.base import DecodeJob, Strategy, register_strategy
from shared_core.decoding.urial_mode import clear_prefix_cache, urial_deltas
from shared_core.models import LocalModel
from shared_core.urial import parse_urial_answer, urial_prompt


@pytest.fixture(scope="module")
def wide_tiny(tmp_path_factory: pytest.TempPathFactory, smollm2: LocalModel, save_tiny_llama) -> LocalModel:
    """A tiny random model whose context window holds the URIAL preamble."""
    return load_model(save_tiny_llama(tmp_path_factory.mktemp("wide-tiny"), smollm2.tokenizer, seed=1,
                                      max_position_embeddings=4096, pad_token_id=None))


def test_cached_preamble_gives_the_same_tokens_as_a_full_prefill(wide_tiny: LocalModel) -> None:
    clear_prefix_cache()
    query = "How do I boil an egg?"
    first = generate(wide_tiny, query, urial=True, max_new_tokens=12)
    second = generate(wide_tiny, query, urial=True, max_new_tokens=12)
    assert first.stats.extra["urial_preamble_cached"] is False
    assert second.stats.extra["urial_preamble_cached"] is True
    assert second.stats.extra["prefix_tokens_reused"] == second.stats.extra["urial_preamble_tokens"]
    parts = urial_prompt(query)
    ids = wide_tiny.encode(parts.prefix, add_special_tokens=True) + wide_tiny.encode(parts.suffix)
    assert first.stats.prompt_tokens == len(ids)
    with torch.inference_mode():
        out = wide_tiny.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                       max_new_tokens=12, do_sample=False, eos_token_id=None)
    expected = out[0, len(ids):].tolist()
    assert first.token_ids == expected[: len(first.token_ids)]
    assert second.token_ids == first.token_ids


def test_urial_works_with_other_strategies(wide_tiny: LocalModel) -> None:
    a = generate(wide_tiny, "Name a color.", urial="help", strategy="sample", seed=5, max_new_tokens=8)
    b = generate(wide_tiny, "Name a color.", urial="help", strategy="sample", seed=5, max_new_tokens=8)
    assert a.token_ids == b.token_ids and a.stats.extra["prefix_tokens_reused"] > 0


def test_urial_stream_shows_only_the_clean_answer() -> None:
    raw_steps = ["Paris is", "Paris is the capital.\n", "Paris is the capital.\n```", "Paris is the capital.\n```\n"]
    state = {"i": -1}

    def raw_text() -> str:
        return raw_steps[state["i"]]

    def raw_deltas():
        for i in range(len(raw_steps)):
            state["i"] = i
            yield "x"

    shown = list(urial_deltas(raw_text, raw_deltas()))
    assert "".join(shown) == parse_urial_answer(raw_steps[-1]) == "Paris is the capital."
    assert all("`" not in part for part in shown)


def test_urial_stream_equals_generate_on_the_embedded_model(smollm2: LocalModel) -> None:
    s = stream(smollm2, "What is the capital of France?", urial=True, max_new_tokens=40)
    text = "".join(s)
    assert text == s.result.text
    assert "Paris" in text
    assert "# Query" not in text and "```" not in text and "# Answer" not in text
    assert s.result.finish_reason in {"stop", "eos"}


@pytest.mark.parametrize(
    ("urial", "message"),
    [
        ({"examples": []}, "examples: .*at least one"),
        ({"examples": [{"query": "Hi", "answer": ""}]}, r"examples\[0\].answer"),
        ({"examples": [{"query": "Hi"}]}, r"examples\[0\]"),
        ("polite", "urial: unknown variant 'polite'"),
        ({"style": "x"}, "urial.style: not an option"),
    ],
)
def test_bad_urial_options_fail_before_model_work(urial, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        generate("no-such-model-is-loaded-first", "Hello", urial=urial)


def test_preamble_longer_than_the_context_window(tiny_model: LocalModel) -> None:
    with pytest.raises(ConfigError, match=r"preamble: urial preamble is \d+ tokens .*context window is 512 tokens"):
        generate(tiny_model, "Hello", urial=True, max_new_tokens=4)


class _ScriptParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = ""


@register_strategy
class _ScriptedStrategy(Strategy):
    """Emits a fixed continuation token by token, whatever the model says: format handling in isolation."""

    name = "urial_test_scripted"
    Params = _ScriptParams

    def decode(self, job: DecodeJob) -> Iterator[Sequence[int]]:
        for token in job.model.encode(job.params.text):
            yield (token,)


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        # the answer opens an unlabelled block; the stop string takes the block's closing fence with it
        ("Benefits:\n```\n1) mood\n2) sleep\n```\n\n# Query:\n```x```", "Benefits:\n```\n1) mood\n2) sleep\n```"),
        ("Paris.\n```\n\n# Query:", "Paris."),  # the usual end
        ("Paris.\n```\n\nSome drift.\n", "Paris."),  # the fence closed, then drift without a header
        ("Intro\n```python\nx = 1\n```\n\nDone.\n```\n\n# Query:", "Intro\n```python\nx = 1\n```\n\nDone."),
    ],
)
def test_urial_answers_keep_their_code_blocks_balanced(wide_tiny: LocalModel, continuation: str,
                                                       expected: str) -> None:
    result = generate(wide_tiny, "q", urial=True, strategy="urial_test_scripted", text=continuation,
                      max_new_tokens=200)
    assert result.finish_reason == "stop"
    assert result.text == expected
    assert "".join(stream(wide_tiny, "q", urial=True, strategy="urial_test_scripted", text=continuation,
                          max_new_tokens=200)) == expected
