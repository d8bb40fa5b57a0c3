"""Private helpers for the LlamaIndex adapter: resolving per-call settings, converting messages, reports."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock

from shared_core.cancel import CancelToken
from shared_core.errors import ConfigError
from shared_core.models import cached, resolve_model_source
from shared_core.request import Plan, Request, plan
from shared_core.result import GenerationResult

# LlamaIndex's message roles, mapped to the four the engine and chat templates accept.
_ROLE_MAP: dict[str, str] = {
    MessageRole.SYSTEM.value: "system",
    MessageRole.DEVELOPER.value: "system",
    MessageRole.USER.value: "user",
    MessageRole.ASSISTANT.value: "assistant",
    MessageRole.CHATBOT.value: "assistant",
    MessageRole.MODEL.value: "assistant",
    MessageRole.TOOL.value: "tool",
    MessageRole.FUNCTION.value: "tool",
}

#: Keyword arguments of complete()/chat() that choose how to decode; any other keyword is a strategy parameter.
SETTING_KEYS = ("policy", "reward", "strategy", "strategy_params", "max_new_tokens", "stop", "seed", "urial")


@dataclass
class DecodeSettings:
    """What one call decodes with, after merging the instance's settings and the call's arguments."""

    decided: Plan
    max_new_tokens: int
    stop: list[str] | None
    seed: int | None
    urial: Any = False

    @property
    def policy(self) -> str | None:
        return self.decided.policy

    def request(self, model: Any, prompt: Any, *, cancel: CancelToken | None = None, **kwargs: Any) -> Request:
        """The core :class:`Request` for ``prompt`` (every check runs here, before model work)."""
        return Request.build(model, prompt, max_new_tokens=self.max_new_tokens, stop=self.stop, seed=self.seed,
                             urial=self.urial, decided=self.decided, cancel=cancel, **kwargs)


def plan_call(instance: Mapping[str, Any], call: Mapping[str, Any]) -> DecodeSettings:
    """Merges one call's arguments into the instance's settings (both keyed like :data:`SETTING_KEYS`).

    A call's values replace the instance's; policy, reward, strategy and parameters combine by
    :func:`shared_core.request.plan`'s rules (``None`` means "not given"; a reward alone selects the
    strategy that moves it). Keys of ``call`` outside :data:`SETTING_KEYS` are strategy parameters.
    """
    call_policy = call.get("policy")
    decided = plan(
        policy=call_policy if call_policy is not None else instance.get("policy"),
        strategy=call.get("strategy") or instance.get("strategy"),
        reward=call.get("reward"), instance_reward=instance.get("reward"), policy_from_call=call_policy is not None,
        param_layers=[instance.get("strategy_params"), call.get("strategy_params"),
                      {k: v for k, v in call.items() if k not in SETTING_KEYS}],
    )
    common = {key: call[key] if call.get(key) is not None else instance.get(key)
              for key in ("max_new_tokens", "stop", "seed", "urial")}
    return DecodeSettings(decided=decided, **common)


# --------------------------------------------------------------------------- model facts


@dataclass(frozen=True)
class ModelFacts:
    """What LlamaIndex asks of a model before every call (``metadata``), read without loading weights."""

    context_window: int
    has_chat_template: bool


def model_facts(name_or_path: str) -> ModelFacts:
    """Reads the context window and chat-template support from the model's files (once per process).

    LlamaIndex reads ``metadata`` before every call (for its instrumentation payload), so this must
    not load weights: a request with a bad setting still fails with its ConfigError first.
    """
    location = resolve_model_source(name_or_path)

    def read() -> ModelFacts:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(location)
        window = next((v for a in ("max_position_embeddings", "n_positions", "max_sequence_length")
                       if isinstance(v := getattr(config, a, None), int) and v > 0), None)
        folder = Path(location)
        if folder.is_dir():
            tokenizer_config = folder / "tokenizer_config.json"
            settings = json.loads(tokenizer_config.read_text(encoding="utf-8")) if tokenizer_config.is_file() else {}
            chat = (folder / "chat_template.jinja").is_file() or bool(settings.get("chat_template"))
            window = window or int(settings.get("model_max_length") or 2048)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(location)
            chat = bool(getattr(tokenizer, "chat_template", None))
            window = window or int(getattr(tokenizer, "model_max_length", 2048))
        return ModelFacts(context_window=window, has_chat_template=chat)

    return cached(("llamaindex_deal.model_facts", location), read, model=False)


# --------------------------------------------------------------------------- messages


def tool_call_dict(block: ToolCallBlock, index: int) -> dict[str, Any]:
    """An OpenAI-style tool call (what chat templates render) from a LlamaIndex ToolCallBlock."""
    arguments: Any = block.tool_kwargs
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            pass  # keep the raw text; the template shows it as is
    return {
        "id": block.tool_call_id or f"call_{index}",
        "type": "function",
        "function": {"name": block.tool_name, "arguments": arguments},
    }


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as the engine's ``{"role", "content"}`` dicts.

    Text blocks are joined; an assistant message's ToolCallBlocks become ``tool_calls``; a tool
    result keeps its ``tool_call_id`` (and tool name when LlamaIndex recorded one).
    """
    converted: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool_call_id -> tool name, so results can name their tool
    for i, message in enumerate(messages):
        if not isinstance(message, ChatMessage):
            raise ConfigError(f"messages[{i}]", f"must be a llama_index ChatMessage, got {type(message).__name__}")
        role_value = message.role.value if isinstance(message.role, MessageRole) else str(message.role)
        role = _ROLE_MAP.get(role_value)
        if role is None:
            raise ConfigError(f"messages[{i}].role", f"{role_value!r} is not one of {sorted(_ROLE_MAP)}")
        text = "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))
        entry: dict[str, Any] = {"role": role, "content": text}
        calls = [b for b in message.blocks if isinstance(b, ToolCallBlock)]
        if role == "assistant" and calls:
            entry["tool_calls"] = [tool_call_dict(b, len(converted) * 10 + j) for j, b in enumerate(calls)]
            call_names.update({c["id"]: c["function"]["name"] for c in entry["tool_calls"]})
        if role == "tool":
            call_id = message.additional_kwargs.get("tool_call_id")
            if call_id:
                entry["tool_call_id"] = str(call_id)
            name = message.additional_kwargs.get("name") or message.additional_kwargs.get("tool_name") \
                or call_names.get(str(call_id))
            if name:
                entry["name"] = str(name)
        converted.append(entry)
    return converted


# --------------------------------------------------------------------------- reports


def raw_payload(result: GenerationResult, settings: DecodeSettings) -> dict[str, Any]:
    """The response's ``raw``: the full GenerationResult, the policy, and OpenAI-style ``usage``."""
    payload = result.to_dict()
    payload["policy"] = settings.policy
    payload["usage"] = {
        "prompt_tokens": result.stats.prompt_tokens,
        "completion_tokens": result.stats.new_tokens,
        "total_tokens": result.stats.prompt_tokens + result.stats.new_tokens,
    }
    return payload
