"""The ``deal`` command line."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shared_core.cli import app, parse_param

runner = CliRunner()


def test_generate_json_on_the_embedded_model(smollm2) -> None:
    result = runner.invoke(app, ["generate", "--model", "smollm2", "--json", "-n", "24",
                                 "Give me two tips for staying safe online."])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("text", "strategy", "model", "finish_reason", "new_tokens", "seconds", "forward_passes", "reward"):
        assert key in payload
    assert payload["strategy"] == "greedy" and payload["model"] == "smollm2"
    assert payload["new_tokens"] == 24 and payload["finish_reason"] == "length"
    assert payload["forward_passes"] == {"policy": 24}
    assert "password" in payload["text"].lower()


def test_generate_streams_text(smollm2) -> None:
    result = runner.invoke(app, ["generate", "-n", "8", "--stop", "Paris", "What is the capital of France?"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "The capital of France is"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--reward", "{not json", "hi"], "--reward: not valid JSON"),
        (["--strategy", "nope", "hi"], "unknown strategy 'nope'; registered strategies:"),
        (["--model", "nosuch", "hi"], "not an embedded alias (gemma3-270m, smollm2)"),
        (["-n", "0", "hi"], "max_new_tokens: must be a positive integer"),
        (["  "], "prompt: must be a non-empty string"),
        (["--strategy", "greedy", "--param", "temperature=2", "hi"],
         "params.temperature: not a parameter of strategy 'greedy'"),
        (["--param", "novalue", "hi"], "--param: expected KEY=VALUE"),
    ],
)
def test_generate_bad_input(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["generate", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_parse_param_reads_json_values() -> None:
    assert parse_param("top_k=5") == ("top_k", 5)
    assert parse_param("weight=0.5") == ("weight", 0.5)
    assert parse_param("mode=direct") == ("mode", "direct")
    assert parse_param("words=[\"a\",\"b\"]") == ("words", ["a", "b"])


def test_models_and_strategies_listings() -> None:
    models = runner.invoke(app, ["models"])
    assert "smollm2 (default)" in models.output and "gemma3-270m" in models.output
    strategies = runner.invoke(app, ["strategies"])
    assert "greedy:" in strategies.output and "sample:" in strategies.output
