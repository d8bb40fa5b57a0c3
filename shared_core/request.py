"""One generation request, built and validated once; the planner that fills it and the reporter that describes it.

Data flows one way: an adapter, the CLI or the server describes a call -> :func:`plan` resolves
policy, reward, strategy and parameters -> :meth:`Request.build` validates everything (no model
work) -> a strategy decodes it -> :func:`report` turns the result into the metadata every adapter
and the server return.

Planning rules (the same for ``generate``, both adapters and the server):

* **Policy.** A call's policy replaces the instance's. A policy brings a reward, maybe a strategy
  and its parameters.
* **Reward.** ``None`` always means "not given". A call's reward wins; otherwise a policy named by
  the call brings its own reward (the instance's is dropped); otherwise the instance's reward; else
  the policy's.
* **Strategy.** An explicitly named strategy wins, then the policy's. With neither, the reward
  decides (:data:`DEFAULT_STRATEGIES`, by what the reward is: ``Reward.guidance``); with no reward,
  greedy (sampling when a temperature above 0 is given).
* **Parameters.** The policy's apply when its strategy is the one used (or it names none); explicit
  layers follow, later ones winning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from shared_core.cancel import CancelToken
from shared_core.decoding.base import Strategy, get_strategy, list_strategies, validate_params
from shared_core.decoding.urial_mode import UrialOptions, parse_urial_option
from shared_core.errors import ConfigError
from shared_core.models import validate_messages
from shared_core.policies import build_reward, resolve_policy
from shared_core.processors.repetition import RepetitionParams
from shared_core.result import GenerationResult
from shared_core.rewards.base import Reward
from shared_core.specs import Policy, parse_policy
from shared_core.urial import URIAL_STOP_STRINGS

__all__ = [
    "CHAT_ONLY_STRATEGIES",
    "DEFAULT_MAX_NEW_TOKENS",
    "DEFAULT_STRATEGIES",
    "MAX_CHAT_SAMPLES",
    "URIAL_REPETITION_PENALTY",
    "ChatOnlyPlan",
    "Plan",
    "Prompt",
    "Request",
    "plan",
    "plan_chat_only",
    "report",
    "request_text",
    "resolve_policy_arg",
    "reward_label",
    "split_batch",
]

Messages = Sequence[Mapping[str, Any]]
Prompt = Union[str, Messages]

DEFAULT_MAX_NEW_TOKENS = 256

#: The repetition penalty URIAL uses unless one is given: small base models loop without one (Gemma 3
#: 270M stopped by itself on 7 of 12 ordinary prompts at 1.0, 11 of 12 at 1.2; benchmarks/urial_eval.py).
URIAL_REPETITION_PENALTY = 1.2

#: The strategy a reward gets when none is named, by what the reward is (``Reward.guidance``); measured
#: in benchmarks/default_strategy_eval.py and documented in docs/strategies.md.
DEFAULT_STRATEGIES: dict[str, str] = {
    "target": "deal",  # keywords, length budgets: lookahead search reaches the known maximum
    "token": "args",  # a classifier reward model rates candidate tokens with its own KV cache
    "judge": "best_of_n",  # a whole-text judge (safety, a Python function): sample n answers, keep the best
    "arm": "genarm",  # an autoregressive reward model: its next-token log-probs guide decoding
}


# --------------------------------------------------------------------------- the planner


@dataclass(frozen=True)
class Plan:
    """What one generation decodes with, and why.

    ``chosen_by`` says where the strategy came from: ``"argument"`` (named explicitly), ``"policy"``,
    ``"reward"`` (the default for the reward's kind) or ``"default"`` (no reward: greedy or sample).
    """

    strategy: str
    reward: Any
    params: dict[str, Any]
    policy: str | None
    chosen_by: str
    built_reward: Reward | None = None


def resolve_policy_arg(policy: Any, field: str = "policy") -> tuple[Policy | None, str | None]:
    """The :class:`Policy` for a policy name, a Policy, or a policy/reward spec (dict or JSON), and its label.

    An unknown name is a ConfigError on ``field`` listing the registered policies.
    """
    if policy is None:
        return None, None
    if isinstance(policy, str) and not policy.strip().startswith("{"):
        if not policy.strip():
            raise ConfigError(field, "must be a registered policy name, got ''")
        try:
            return resolve_policy(policy.strip()), policy.strip()
        except ConfigError as exc:
            raise ConfigError(field, str(exc).split(": ", 1)[-1]) from None
    if isinstance(policy, (Policy, Mapping, str)):
        return parse_policy(dict(policy) if isinstance(policy, Mapping) else policy), None
    raise ConfigError(field, f"must be a registered policy name, a Policy or a policy dict, got {type(policy).__name__}")


def plan(
    *,
    policy: Any = None,
    strategy: str | None = None,
    reward: Any = None,
    instance_reward: Any = None,
    policy_from_call: bool = True,
    param_layers: Iterable[Mapping[str, Any] | None] = (),
    sample: bool = False,
) -> Plan:
    """Applies the module's planning rules; builds the reward (no model is loaded) to pick a default strategy.

    Args:
        policy: a policy name, Policy or policy dict in effect (the call's, else the instance's), or ``None``.
        strategy: the explicitly named strategy (the call's, else the instance's), or ``None``.
        reward: the call's reward, or ``None`` when the call gave none.
        instance_reward: a reward set on a model instance (adapters), below the call's and a call's policy.
        policy_from_call: whether ``policy`` was named by the call (then ``instance_reward`` is dropped).
        param_layers: explicit strategy parameters, lowest precedence first; ``None`` layers are skipped.
        sample: whether the unguided default is ``"sample"`` rather than ``"greedy"`` (a temperature > 0).

    Raises:
        ConfigError: an unknown policy or strategy, a bad reward, a parameter layer that is not a dict.
    """
    resolved, label = resolve_policy_arg(policy)
    if reward is not None:
        chosen_reward = reward
    elif instance_reward is not None and not (policy_from_call and resolved is not None):
        chosen_reward = instance_reward
    else:
        chosen_reward = resolved.reward if resolved is not None else None
    if label is None and isinstance(chosen_reward, str) and not chosen_reward.strip().startswith(("{", "[")):
        label = chosen_reward.strip()  # a reward given as a policy name
    if strategy is not None and (not isinstance(strategy, str) or not strategy.strip()):
        raise ConfigError("strategy", f"must be a strategy name ({', '.join(list_strategies())}), got {strategy!r}")
    built = build_reward(chosen_reward)
    if strategy:
        chosen, chosen_by = strategy, "argument"
    elif resolved is not None and resolved.strategy:
        chosen, chosen_by = resolved.strategy, "policy"
    elif built is not None:
        chosen, chosen_by = default_strategy(built), "reward"
    else:
        chosen, chosen_by = ("sample" if sample else "greedy"), "default"
    params: dict[str, Any] = {}
    if resolved is not None and resolved.strategy in (None, chosen):
        params.update(resolved.params)
    for layer in param_layers:
        if layer is None:
            continue
        if not isinstance(layer, Mapping):
            raise ConfigError("strategy_params", f"must be a dict of strategy parameters, got {type(layer).__name__}")
        params.update(layer)
    return Plan(strategy=chosen, reward=chosen_reward, params=params, policy=label, chosen_by=chosen_by,
                built_reward=built)


def default_strategy(reward: Reward) -> str:
    """The strategy that moves ``reward`` when none is named (:data:`DEFAULT_STRATEGIES`), if it is registered."""
    name = DEFAULT_STRATEGIES.get(reward.guidance, "best_of_n")
    return name if name in list_strategies() else "greedy"


# --------------------------------------------------------------------------- chat-only models

#: What a chat-only model (a chat API without completions or logprobs) can run: it only answers whole
#: conversations, so alignment is the URIAL prompt plus, with a reward, best-of-n reranking.
CHAT_ONLY_STRATEGIES = ("greedy", "sample", "best_of_n")

#: The most answers one call may draw from a chat-only model (each one can be a paid request).
MAX_CHAT_SAMPLES = 16


@dataclass(frozen=True)
class ChatOnlyPlan:
    """How one call runs on a chat-only model: URIAL prompt, ``n`` answers, the reward's pick.

    ``decided`` is the plan as run (``best_of_n``, or ``greedy``/``sample`` for one answer); ``path`` is
    ``"urial+best_of_n"`` (n > 1 answers reranked) or ``"urial"`` (one answer); ``reason`` says why
    this path ran and, when the planned strategy needed logits, which strategy it replaced.
    """

    decided: Plan
    n: int
    temperature: float | None
    path: str
    reason: str
    planned: str


def plan_chat_only(decided: Plan, why: str) -> ChatOnlyPlan:
    """Fits a plan to a chat-only model; ``why`` says why the model is chat-only (it goes into ``reason``).

    A strategy named explicitly must be one of :data:`CHAT_ONLY_STRATEGIES`; any other is a ConfigError on
    ``strategy`` naming it and what it needs. A strategy that came from a policy or from the reward's
    default is replaced by ``best_of_n`` (its ``n``, ``temperature`` and ``top_p`` kept), and the reason
    says so. Without a reward a call draws one answer.

    Raises:
        ConfigError: an explicitly named strategy that needs logits or token-level sampling; ``n`` above
            :data:`MAX_CHAT_SAMPLES`; bad ``best_of_n`` parameters.
    """
    name, reason = decided.strategy, why
    if name in ("greedy", "sample"):
        temperature = decided.params.get("temperature") if name == "sample" else None
        return ChatOnlyPlan(decided=decided, n=1, temperature=temperature, path="urial", reason=reason, planned=name)
    if name != "best_of_n":
        needs = ", ".join(sorted(get_strategy(name).needs))
        if decided.chosen_by == "argument":
            raise ConfigError("strategy", f"strategy {name!r} needs {needs} from the model, but {why}; a chat-only "
                                          f"model runs {', '.join(CHAT_ONLY_STRATEGIES)} (the URIAL prompt, with a "
                                          "reward best_of_n reranks whole answers)")
        kept = {k: v for k, v in decided.params.items() if k in ("n", "temperature", "top_p")}
        reason = f"{why}; the {decided.chosen_by}'s strategy {name!r} needs {needs}, so best_of_n reranks answers"
        decided = Plan(strategy="best_of_n", reward=decided.reward, params=kept, policy=decided.policy,
                       chosen_by=decided.chosen_by, built_reward=decided.built_reward)
    checked = validate_params(get_strategy("best_of_n"), dict(decided.params))
    n = int(getattr(checked, "n"))
    if n > MAX_CHAT_SAMPLES:
        raise ConfigError("n", f"a chat-only model draws at most {MAX_CHAT_SAMPLES} answers per call, got {n}")
    return ChatOnlyPlan(decided=decided, n=n, temperature=float(getattr(checked, "temperature")),
                        path="urial+best_of_n" if n > 1 else "urial", reason=reason, planned=name)


# --------------------------------------------------------------------------- prompts


def _is_messages(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 and all(
        isinstance(m, Mapping) for m in value
    )


def split_batch(prompt_or_batch: Any) -> tuple[list[Prompt], bool]:
    """Returns (prompts, is_batch): a str or a message list is one prompt; a list of those is a batch."""
    if isinstance(prompt_or_batch, str) or _is_messages(prompt_or_batch):
        return [prompt_or_batch], False
    if isinstance(prompt_or_batch, Sequence) and not isinstance(prompt_or_batch, (bytes, bytearray)) \
            and len(prompt_or_batch) > 0:
        return list(prompt_or_batch), True
    raise ConfigError("prompt", "must be a non-empty string, a list of chat messages, or a list of those (a batch)")


def validate_prompt(prompt: Any, field: str = "prompt") -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigError(field, "must be a non-empty string")
        return
    if _is_messages(prompt):
        validate_messages(prompt, field)
        return
    raise ConfigError(field, f"must be a non-empty string or a list of chat messages, got {type(prompt).__name__}")


def request_text(prompt: Prompt) -> str:
    """The user's request as rewards see it: the prompt string, or the last user message."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return str(message.get("content") or "")
    return str(prompt[-1].get("content") or "")


def _check_limits(max_new_tokens: Any, stop: Any, seed: Any) -> tuple[str, ...]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ConfigError("max_new_tokens", f"must be a positive integer, got {max_new_tokens!r}")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, Sequence):
        stops = tuple(stop)
    else:
        raise ConfigError("stop", f"must be a string or a list of strings, got {type(stop).__name__}")
    for i, s in enumerate(stops):
        if not isinstance(s, str) or not s:
            raise ConfigError(f"stop[{i}]", f"stop strings must be non-empty strings, got {s!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError("seed", f"must be an integer or None, got {seed!r}")
    return stops


def _repetition(penalty: Any, penalize_layout: Any, urial: bool) -> RepetitionParams:
    try:
        params = RepetitionParams(repetition_penalty=penalty, penalize_layout=penalize_layout)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(str(error["loc"][0]), f"{error['msg']} (got {error.get('input')!r})") from None
    if params.repetition_penalty is None:
        default = URIAL_REPETITION_PENALTY if urial else 1.0
        params = params.model_copy(update={"repetition_penalty": default})
    return params


# --------------------------------------------------------------------------- the request


@dataclass
class Request:
    """A validated generation request: the model, the prompts, how to decode and within which limits.

    Build one with :meth:`build` (every check runs there, before any model work), then pass it to
    ``generate`` or ``stream``. ``model`` is resolved (loaded) only when decoding starts.
    """

    model: Any
    prompts: list[Prompt]
    batch: bool
    strategy: type[Strategy]
    params: BaseModel
    reward: Reward | None
    plan: Plan
    max_new_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    repetition: RepetitionParams
    chat: bool | None = None
    tools: list[dict[str, Any]] | None = None
    urial: UrialOptions | None = None
    prefix: Any = None
    cancel: CancelToken | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        model: Any,
        prompt: Prompt | Sequence[Prompt],
        *,
        strategy: str | None = None,
        reward: Any = None,
        policy: Any = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        chat: bool | None = None,
        tools: Sequence[Mapping[str, Any]] | None = None,
        prefix: Any = None,
        urial: Any = False,
        cancel: CancelToken | None = None,
        repetition_penalty: float | None = None,
        penalize_layout: bool = False,
        decided: Plan | None = None,
        **params: Any,
    ) -> Request:
        """Plans and validates a request; raises :class:`ConfigError` naming the bad field.

        ``decided`` takes a :class:`Plan` an adapter made itself (with instance settings); otherwise
        ``policy``, ``strategy``, ``reward`` and ``params`` are planned here.
        """
        prompts, is_batch = split_batch(prompt)
        for i, one in enumerate(prompts):
            validate_prompt(one, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
        stops = _check_limits(max_new_tokens, stop, seed)
        options = parse_urial_option(urial)
        if options is not None:
            stops = stops + tuple(s for s in URIAL_STOP_STRINGS if s not in stops)
        if decided is None:
            temperature = params.get("temperature")
            decided = plan(policy=policy, strategy=strategy, reward=reward, param_layers=[params],
                           sample=isinstance(temperature, (int, float)) and temperature > 0)
        strategy_params = dict(decided.params)
        # the repetition settings apply to every strategy; a policy or an adapter may carry them as parameters
        if repetition_penalty is None:
            repetition_penalty = strategy_params.pop("repetition_penalty", None)
        strategy_params.pop("repetition_penalty", None)
        penalize_layout = strategy_params.pop("penalize_layout", penalize_layout)
        repetition = _repetition(repetition_penalty, penalize_layout, options is not None)
        strategy_cls = get_strategy(decided.strategy)
        checked = validate_params(strategy_cls, strategy_params)
        built = decided.built_reward if decided.built_reward is not None else build_reward(decided.reward)
        if strategy_cls.needs_reward and built is None:
            raise ConfigError("reward", f"strategy {strategy_cls.name!r} needs a reward (a spec, a policy name or "
                                        "a function)")
        if cancel is not None and not isinstance(cancel, CancelToken):
            raise ConfigError("cancel", f"must be a CancelToken, got {type(cancel).__name__}")
        return cls(
            model=model, prompts=prompts, batch=is_batch, strategy=strategy_cls, params=checked, reward=built,
            plan=decided, max_new_tokens=max_new_tokens, stop=stops, seed=seed, repetition=repetition, chat=chat,
            tools=list(tools) if tools else None, urial=options, prefix=prefix, cancel=cancel,
        )

    @property
    def strategy_name(self) -> str:
        return self.strategy.name


# --------------------------------------------------------------------------- the reporter


def reward_label(reward: Any) -> Any:
    """A JSON-friendly description of a reward argument: its spec dict, a policy name, or a function's name."""
    if reward is None or isinstance(reward, (str, dict)):
        return reward
    spec = getattr(reward, "spec", None)
    if spec is not None and hasattr(spec, "to_dict"):
        return spec.to_dict()
    if hasattr(reward, "to_dict"):
        return reward.to_dict()
    return getattr(reward, "name", None) or getattr(reward, "__name__", None) or type(reward).__name__


def report(result: GenerationResult, request: Request | None = None, *, policy: str | None = None) -> dict[str, Any]:
    """What alignment did in one generation, as the JSON-ready dict every adapter and the server return.

    Keys (documented in docs/metadata.md): ``model``, ``strategy``, ``strategy_params``, ``policy``,
    ``chosen_by``, ``reward_spec``, ``reward`` (``{"total", "components"}`` or ``None``),
    ``reward_error``, ``finish_reason``, ``stats`` (``prompt_tokens``, ``new_tokens``, ``seconds``,
    ``forward_passes``, ``tokens_processed``, ``extra``).
    """
    reward = None
    if result.reward is not None:
        reward = {"total": result.reward.total, "components": dict(result.reward.components)}
    stats = result.stats
    params: dict[str, Any] = {}
    if request is not None:
        params = {k: v for k, v in request.params.model_dump(mode="json").items() if k != "functions"}
    return {
        "model": result.model,
        "strategy": result.strategy,
        "strategy_params": params,
        "policy": policy if request is None else request.plan.policy,
        "chosen_by": None if request is None else request.plan.chosen_by,
        "reward_spec": None if request is None else reward_label(request.reward),
        "reward": reward,
        "reward_error": result.reward_error,
        "finish_reason": result.finish_reason,
        "stats": {
            "prompt_tokens": stats.prompt_tokens,
            "new_tokens": stats.new_tokens,
            "seconds": round(stats.seconds, 4),
            "forward_passes": dict(stats.forward_passes),
            "tokens_processed": dict(stats.tokens_processed),
            "extra": _json_ready(stats.extra),
        },
    }


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
