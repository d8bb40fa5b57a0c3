"""OpenAI requests in, deal :class:`~shared_core.request.Request` s out; deal results back in OpenAI's shape.

Alignment per request comes from the body's ``deal`` object or from a ``MODEL:POLICY`` model alias.
Who may ask for what:

* named policies (built in, or the operator's ``--policies`` file) are always allowed;
* inline reward specs (``deal.reward`` or an inline ``deal.policy``) only of types that load no model
  (keywords, length, weighted sums of those), unless the server runs with ``--allow-model-rewards``;
* specs can never turn on ``trust_remote_code`` (:mod:`shared_core.specs` rejects it);
* search widths in ``deal.params`` are capped (``Limits.max_search``), and parameters that name a model
  to load (Transfer Q*'s ``baseline``) are refused like model-loading rewards.

OpenAI sampling fields map onto the chosen strategy's parameters; one the strategy has no parameter for
is not applied and the response says so (``deal.warnings`` and the ``X-Deal-Warning`` header).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared_core.decoding.base import get_strategy, list_strategies
from shared_core.decoding.tool_call import forced_call_params
from shared_core.errors import ConfigError
from shared_core.request import Plan, Request, plan, report
from shared_core.result import GenerationResult
from shared_core.server.errors import APIError
from shared_core.server.schemas import ChatCompletionRequest, CompletionRequest, DealOptions
from shared_core.server.settings import ServerSettings
from shared_core.server.structured import JSON_OBJECT_SCHEMA, check_response_schema, with_json_schema
from shared_core.specs import Policy, loads_models, parse_policy, parse_reward_spec
from shared_core.tools import (
    ParsedOutput,
    ToolCall,
    ToolChoice,
    check_tool_schemas,
    normalize_tools,
    parse_tool_calls,
    prepare_tool_prompt,
    resolve_tool_choice,
)

__all__ = [
    "MODEL_PARAMS",
    "SEARCH_PARAMS",
    "Prepared",
    "chat_choice",
    "deal_block",
    "finish_reason",
    "new_id",
    "parse_output",
    "prepare_chat",
    "prepare_completion",
    "public_error",
    "public_field",
    "resolve_model_alias",
    "usage",
]

#: Strategy parameters that widen the search (more forward passes per token); capped per request.
SEARCH_PARAMS = ("n", "candidates", "beam_width", "lookahead", "k", "horizon", "max_rejections")

#: Strategy parameters that name a model to load (Transfer Q*'s baseline); only operator policies may set them.
MODEL_PARAMS = ("baseline",)

_SAMPLING = ("temperature", "top_p")

#: The smallest temperature above 0 a request may give: dividing float32 logits by less overflows them.
MIN_TEMPERATURE = 1e-6


@dataclass
class Prepared:
    """One API call, planned: a request per choice, and how to present the results."""

    requests: list[Request]
    kind: str  # "chat" or "text"
    model_id: str
    strategy: str
    policy: str | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    warnings: list[str] = field(default_factory=list)
    prompt_of_choice: list[int] = field(default_factory=list)
    token_field: str = "max_tokens"  # the field the request gave its token budget in

    @property
    def tools_on(self) -> bool:
        return bool(self.tools) and self.tool_choice is not None and self.tool_choice.mode != "none"

    @property
    def forced(self) -> bool:
        return self.tool_choice is not None and self.tool_choice.forced

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _renamed(exc: ConfigError, prefix: str) -> ConfigError:
    """``exc`` with its field under ``prefix`` (``reward.words`` -> ``deal.reward.words``)."""
    message = str(exc).split(": ", 1)[-1]
    field_name = exc.field
    if not field_name.startswith(prefix):
        root = prefix.rsplit(".", 1)[-1]
        if field_name == root or field_name.startswith((root + ".", root + "[")):
            field_name = field_name[len(root):]
            field_name = prefix + field_name
        else:
            field_name = f"{prefix}.{field_name}"
    return ConfigError(field_name, message)


# --------------------------------------------------------------------------- alignment


def resolve_model_alias(settings: ServerSettings, model: str) -> str | None:
    """The policy a ``MODEL:POLICY`` alias names (``None`` for the plain model id); 404 for other models."""
    base = settings.model_id
    if model == base:
        return None
    if model.startswith(base + ":") and model[len(base) + 1:]:
        name = model[len(base) + 1:]
        settings.find_policy(name, "model")
        return name
    aliases = [base] + [f"{base}:{n}" for n in settings.policy_names()]
    raise APIError(404, f"model {model!r} is not served here; the models are: {', '.join(aliases)}",
                   param="model", code="model_not_found")


def _check_inline(settings: ServerSettings, spec: Any, field_name: str) -> None:
    if spec is None or settings.allow_model_rewards:
        return
    if loads_models(spec):
        raise ConfigError(field_name, (
            f"an inline reward of type {spec.type!r} would load a model, which requests may not do on this server; "
            "inline rewards may use keywords, length, or weighted sums of those. Use a named policy instead "
            f"(this server's: {', '.join(settings.policy_names())})"))


def _check_params(settings: ServerSettings, params: Mapping[str, Any]) -> None:
    """Request-supplied strategy parameters: search widths capped, no model to load (unless allowed)."""
    for name in MODEL_PARAMS:
        if params.get(name) is not None and not settings.allow_model_rewards:
            raise ConfigError(f"deal.params.{name}", "names a model to load, which requests may not do on this "
                                                     "server; use an operator policy that sets it")
    cap = settings.limits.max_search
    for name in SEARCH_PARAMS:
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            raise ConfigError(f"deal.params.{name}", f"at most {cap} on this server, got {value}")


def _alignment(settings: ServerSettings, alias_policy: str | None, deal: DealOptions | None,
               sample: bool) -> Plan:
    """The plan of a request's alignment (policy, strategy, reward, params), checked against the server's rules."""
    deal = deal or DealOptions()
    policy: Policy | None = None
    label: str | None = None
    if deal.policy is not None and alias_policy is not None:
        raise ConfigError("deal.policy", f"the model alias already names policy {alias_policy!r}; "
                                         "give the policy in one place")
    if isinstance(deal.policy, str):
        policy, label = settings.find_policy(deal.policy.strip(), "deal.policy"), deal.policy.strip()
    elif isinstance(deal.policy, dict):
        try:
            policy = parse_policy(deal.policy)
        except ConfigError as exc:
            raise _renamed(exc, "deal.policy") from None
        _check_inline(settings, policy.reward, "deal.policy.reward")
    elif alias_policy is not None:
        policy, label = settings.find_policy(alias_policy, "model"), alias_policy
    reward: Any = None
    if isinstance(deal.reward, str):
        named = settings.find_policy(deal.reward.strip(), "deal.reward")
        reward = named.reward
        label = label or deal.reward.strip()
    elif isinstance(deal.reward, dict):
        try:
            reward = parse_reward_spec(deal.reward)
        except ConfigError as exc:
            raise _renamed(exc, "deal.reward") from None
        _check_inline(settings, reward, "deal.reward")
    params = dict(deal.params or {})
    _check_params(settings, params)
    if policy is not None and label is None:  # an inline policy's parameters are the request's too
        _check_params(settings, policy.params)
    try:
        if deal.strategy is not None:
            get_strategy(deal.strategy)
        decided = plan(policy=policy, strategy=deal.strategy, reward=reward, param_layers=[params], sample=sample)
    except ConfigError as exc:
        raise _renamed(exc, "deal") from None
    try:
        get_strategy(decided.strategy)
    except ConfigError as exc:  # a strategy named by an inline policy
        raise ConfigError("deal.policy.strategy", str(exc).split(": ", 1)[-1]) from None
    return dataclasses.replace(decided, policy=label if label is not None else decided.policy)


def _apply_sampling(decided: Plan, body: Any, explicit: Mapping[str, Any], warnings: list[str]) -> Plan:
    """Puts ``temperature`` / ``top_p`` into the strategy's parameters when it has them; warns when it has not."""
    fields = get_strategy(decided.strategy).Params.model_fields
    params = dict(decided.params)
    for name in _SAMPLING:
        value = getattr(body, name)
        if value is None or name in explicit:
            continue
        if name in fields:
            params[name] = value
        elif decided.strategy != "greedy" or (name == "temperature" and value > 0):
            if (name == "temperature" and value > 0) or (name == "top_p" and value < 1):
                warnings.append(f"{name}={value} not applied: strategy {decided.strategy!r} has no {name} parameter")
    return dataclasses.replace(decided, params=params)


def _unsupported(body: Any, kind: str) -> None:
    """400 for OpenAI fields that would change the output but are not supported here (set to a non-neutral value)."""
    checks: list[tuple[str, bool, str]] = [
        ("presence_penalty", bool(body.presence_penalty), "use deal.params.repetition_penalty instead"),
        ("frequency_penalty", bool(body.frequency_penalty), "use deal.params.repetition_penalty instead"),
        ("logit_bias", bool(body.logit_bias), "token biases are not supported"),
    ]
    if kind == "chat":
        checks += [
            ("logprobs", bool(body.logprobs), "no strategy served here reports token log-probabilities "
                                              f"(strategies: {', '.join(list_strategies())})"),
            ("top_logprobs", bool(body.top_logprobs), "no strategy served here reports token log-probabilities"),
            ("modalities", body.modalities not in (None, ["text"]), "only text output is supported"),
            ("reasoning_effort", body.reasoning_effort is not None, "not a reasoning model"),
        ]
    else:
        checks += [
            ("logprobs", body.logprobs is not None and body.logprobs > 0,
             f"no strategy served here reports token log-probabilities (strategies: {', '.join(list_strategies())})"),
            ("echo", bool(body.echo), "echoing the prompt is not supported"),
            ("suffix", bool(body.suffix), "insertion (suffix) is not supported"),
            ("best_of", body.best_of not in (None, 1), "use deal.strategy 'best_of_n' with a reward instead"),
        ]
    for name, bad, why in checks:
        if bad:
            raise APIError(400, f"{name}: not supported by this server ({why})", param=name, code="unsupported")


def _limits(settings: ServerSettings, body: Any, max_tokens: int | None, token_field: str, prompt_chars: int,
            prompt_field: str) -> tuple[int, int]:
    limits = settings.limits
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise APIError(400, f"{token_field}: at most {limits.max_tokens} on this server, got {max_tokens}",
                       param=token_field, code="limit_exceeded")
    n = body.n or 1
    if n > limits.max_n:
        raise APIError(400, f"n: at most {limits.max_n} choices on this server, got {n}", param="n",
                       code="limit_exceeded")
    if prompt_chars > limits.max_prompt_chars:
        raise APIError(400, f"{prompt_field}: {prompt_chars} characters, over this server's limit of "
                            f"{limits.max_prompt_chars}", param=prompt_field, code="limit_exceeded")
    if body.temperature is not None and 0 < body.temperature < MIN_TEMPERATURE:
        raise APIError(400, f"temperature: must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {body.temperature} "
                            "(smaller values overflow the logits)", param="temperature", code="invalid_value")
    stop = body.stop
    if isinstance(stop, list) and len(stop) > 4:
        raise APIError(400, f"stop: at most 4 stop strings, got {len(stop)}", param="stop")
    return (max_tokens or limits.default_max_tokens), n


_FIELD_NAMES = {"params.temperature": "temperature", "params.top_p": "top_p"}


def public_field(field_name: str, *, token_field: str = "max_tokens", prompt_field: str = "prompt") -> str:
    """The request field a core ConfigError's field stands for (``max_new_tokens`` -> ``max_tokens`` ...)."""
    if field_name == "max_new_tokens":
        return token_field
    if field_name == "prompt":
        return prompt_field
    if field_name in _FIELD_NAMES:
        return _FIELD_NAMES[field_name]
    if field_name.split(".", 1)[0].split("[", 1)[0] in ("params", "reward", "strategy", "policy"):
        return f"deal.{field_name}"
    return field_name


def public_error(exc: ConfigError, *, token_field: str = "max_tokens", prompt_field: str = "prompt") -> ConfigError:
    """``exc`` with its field named as the request names it (see :func:`public_field`)."""
    name = public_field(exc.field, token_field=token_field, prompt_field=prompt_field)
    return exc if name == exc.field else ConfigError(name, str(exc).split(": ", 1)[-1])


def _seed(seed: int | None, i: int) -> int | None:
    """Choice ``i``'s seed, wrapped into the signed 64-bit range torch takes."""
    return None if seed is None else ((seed + i + 2**63) % 2**64) - 2**63


def _build(model: Any, prompt: Any, decided: Plan, *, max_tokens: int, stop: Any, seed: int | None,
           chat: bool, prompt_field: str, token_field: str, tools: Any = None) -> Request:
    try:
        return Request.build(model, prompt, decided=decided, max_new_tokens=max_tokens, stop=stop, seed=seed,
                             chat=chat, tools=tools)
    except ConfigError as exc:
        raise public_error(exc, token_field=token_field, prompt_field=prompt_field) from None


# --------------------------------------------------------------------------- chat


def _message_dicts(body: ChatCompletionRequest) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    chars = 0
    for i, message in enumerate(body.messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise APIError(400, f"messages[{i}].content[{j}]: only text parts are supported "
                                        "({\"type\": \"text\", \"text\": ...})", param=f"messages[{i}].content[{j}]")
                texts.append(part["text"])
            content = "".join(texts)
        if content is None and not (message.role == "assistant" and message.tool_calls):
            raise APIError(400, f"messages[{i}].content: required for role {message.role!r}",
                           param=f"messages[{i}].content")
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": content or ""}
        if message.tool_calls:
            entry["tool_calls"] = message.tool_calls
        if message.tool_call_id:
            entry["tool_call_id"] = message.tool_call_id
        if message.name and role == "tool":
            entry["name"] = message.name
        chars += len(content or "")
        out.append(entry)
    return out, chars


def prepare_chat(settings: ServerSettings, model: Any, body: ChatCompletionRequest) -> Prepared:
    """Plans a chat completion: checks, alignment, tools or response format, one Request per choice."""
    alias_policy = resolve_model_alias(settings, body.model)
    _unsupported(body, "chat")
    messages, chars = _message_dicts(body)
    token_field = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_tokens, n = _limits(settings, body, body.max_completion_tokens or body.max_tokens, token_field, chars,
                            "messages")
    warnings: list[str] = []
    sample = bool(body.temperature and body.temperature > 0)
    decided = _alignment(settings, alias_policy, body.deal, sample)
    explicit = dict((body.deal.params if body.deal else None) or {})
    sampling_warnings: list[str] = []
    decided = _apply_sampling(decided, body, explicit, sampling_warnings)
    tools = normalize_tools([t.model_dump(exclude_none=True) for t in body.tools]) if body.tools else []
    choice = resolve_tool_choice(body.tool_choice, tools) if (tools or body.tool_choice not in (None, "auto",
                                                                                               "none")) else None
    fmt = body.response_format
    structured = fmt is not None and fmt.type != "text"
    temperature = float(body.temperature or 0.0)
    if structured and choice is not None and choice.forced:
        raise ConfigError("response_format", "cannot be combined with a forced tool call (tool_choice)")
    if (structured or (choice is not None and choice.forced)) and body.deal and body.deal.strategy:
        raise ConfigError("deal.strategy", "a forced tool call or a response_format decodes with its own strategy "
                                           "(tool_call / json_schema); leave deal.strategy out")
    own = "a forced tool call" if choice is not None and choice.forced else "a response_format answer"
    if (choice is not None and choice.forced) or structured:
        dropped = [name for name, given in (("deal.params", bool(explicit)), ("the reward", decided.reward is not None),
                                            ("top_p", body.top_p is not None and body.top_p < 1)) if given]
        if dropped:  # data, not prose: decoded to fit the schema, without the reward (as in the adapters)
            warnings.append(f"{', '.join(dropped)} not applied: {own} is decoded to fit its schema")
    else:
        warnings.extend(sampling_warnings)
    if choice is not None and choice.forced:
        check_tool_schemas([t for t in tools if t["function"]["name"] in choice.names])
        decided = Plan(strategy="tool_call", reward=None, params=forced_call_params(tools, choice,
                       temperature=temperature), policy=decided.policy, chosen_by="argument")
    elif structured:
        assert fmt is not None
        if fmt.type == "json_schema":
            if fmt.json_schema is None or fmt.json_schema.schema_ is None:
                raise ConfigError("response_format.json_schema.schema", "required for type 'json_schema'")
            schema = check_response_schema(fmt.json_schema.schema_)
        else:
            schema = JSON_OBJECT_SCHEMA
        json_params = {"json_schema": schema, "temperature": temperature}
        # built and checked as greedy, then decoded by the json_schema strategy (see with_json_schema)
        decided = Plan(strategy="greedy", reward=None, params={}, policy=decided.policy, chosen_by="argument")
        hint = "Answer with JSON only" + (f", matching this JSON schema: {schema}" if fmt.type == "json_schema" else "")
        if messages[0]["role"] == "system":
            messages[0] = {**messages[0], "content": f"{messages[0]['content']}\n\n{hint}."}
        else:
            messages.insert(0, {"role": "system", "content": hint + "."})
    prompt: Any = messages
    template_tools = None
    has_history = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if tools or has_history:
        prepared = prepare_tool_prompt(messages, tools, tokenizer=model.tokenizer, tool_choice=choice)
        prompt, template_tools = prepared.messages, prepared.template_tools
    requests = [
        _build(model, prompt, decided, max_tokens=max_tokens, stop=None if choice and choice.forced else body.stop,
               seed=_seed(body.seed, i), chat=True, prompt_field="messages",
               token_field=token_field, tools=template_tools)
        for i in range(n)
    ]
    if structured:
        requests = [with_json_schema(r, json_params) for r in requests]
    return Prepared(requests=requests, kind="chat", model_id=body.model, strategy=requests[0].strategy_name,
                    policy=decided.policy, tools=tools, tool_choice=choice, warnings=warnings,
                    prompt_of_choice=[0] * n, token_field=token_field)


# --------------------------------------------------------------------------- completions


def prepare_completion(settings: ServerSettings, model: Any, body: CompletionRequest) -> Prepared:
    """Plans a text completion: each prompt (a string or a list of them) times ``n``, no chat template."""
    alias_policy = resolve_model_alias(settings, body.model)
    _unsupported(body, "text")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise APIError(400, "prompt: must be a string or a non-empty list of strings", param="prompt")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise APIError(400, f"prompt{'' if len(prompts) == 1 else f'[{i}]'}: must be a non-empty string",
                           param="prompt")
    max_tokens, n = _limits(settings, body, body.max_tokens, "max_tokens", sum(len(p) for p in prompts), "prompt")
    if n * len(prompts) > settings.limits.max_n:
        raise APIError(400, f"n: prompts x n is {n * len(prompts)}, over this server's limit of "
                            f"{settings.limits.max_n} choices", param="n", code="limit_exceeded")
    warnings: list[str] = []
    decided = _alignment(settings, alias_policy, body.deal, bool(body.temperature and body.temperature > 0))
    explicit = dict((body.deal.params if body.deal else None) or {})
    decided = _apply_sampling(decided, body, explicit, warnings)
    requests, owners = [], []
    for p_index, text in enumerate(prompts):
        for i in range(n):
            requests.append(_build(model, text, decided, max_tokens=max_tokens, stop=body.stop,
                                   seed=_seed(body.seed, i), chat=False,
                                   prompt_field="prompt", token_field="max_tokens"))
            owners.append(p_index)
    return Prepared(requests=requests, kind="text", model_id=body.model, strategy=decided.strategy,
                    policy=decided.policy, warnings=warnings, prompt_of_choice=owners)


# --------------------------------------------------------------------------- results


def parse_output(prepared: Prepared, result: GenerationResult) -> ParsedOutput:
    """The answer's text and tool calls (when tools are on)."""
    if prepared.tools_on:
        return parse_tool_calls(result.text, prepared.tool_names)
    return ParsedOutput(result.text, [])


def finish_reason(result: GenerationResult, calls: Sequence[ToolCall] = ()) -> str:
    if calls:
        return "tool_calls"
    return "length" if result.finish_reason == "length" else "stop"


def deal_block(result: GenerationResult, request: Request, warnings: Sequence[str] = ()) -> dict[str, Any]:
    """What alignment did, as the ``deal`` object of a response (see docs/metadata.md for the report)."""
    summary = report(result, request)
    block = {
        "strategy": summary["strategy"],
        "policy": summary["policy"],
        "chosen_by": summary["chosen_by"],
        "reward": summary["reward"],
        "forward_passes": summary["stats"]["forward_passes"],
        "finish_reason": summary["finish_reason"],
        "strategy_params": summary["strategy_params"],
        "seconds": summary["stats"]["seconds"],
    }
    if summary["reward_error"]:
        block["reward_error"] = summary["reward_error"]
    if warnings:
        block["warnings"] = list(warnings)
    return block


def tool_call_dicts(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    import json

    return [{"id": c.id, "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls]


def chat_choice(index: int, prepared: Prepared, result: GenerationResult, request: Request) -> dict[str, Any]:
    parsed = parse_output(prepared, result)
    message: dict[str, Any] = {"role": "assistant", "content": parsed.text if (parsed.text or not parsed.tool_calls)
                               else None}
    if parsed.tool_calls:
        message["tool_calls"] = tool_call_dicts(parsed.tool_calls)
    choice = {"index": index, "message": message, "logprobs": None,
              "finish_reason": finish_reason(result, parsed.tool_calls),
              "deal": deal_block(result, request)}
    if parsed.errors:
        choice["deal"]["tool_call_errors"] = parsed.errors
    return choice


def usage(results: Sequence[GenerationResult], prompt_owner: Sequence[int]) -> dict[str, int]:
    """OpenAI usage: each distinct prompt's tokens once, every choice's tokens."""
    seen: dict[int, int] = {}
    for owner, result in zip(prompt_owner, results):
        seen.setdefault(owner, result.stats.prompt_tokens)
    prompt = sum(seen.values())
    completion = sum(r.stats.new_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def created() -> int:
    return int(time.time())
