"""Settings of ``deal serve``: which model, who may call, which policies, and the limits on every request.

Operator policies come from ``--policies FILE`` (JSON or YAML): a mapping of policy name to a policy
(``{"reward": ..., "strategy": ..., "params": ...}``) or a bare reward spec. They are kept by the
server (not written into the process-wide registry), listed in ``/v1/models`` as ``MODEL:NAME`` aliases,
and are the only way a request can use a reward that loads a model, unless the server was started
with ``--allow-model-rewards``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_core.errors import ConfigError
from shared_core.policies import list_policies, resolve_policy
from shared_core.specs import Policy, parse_policy

__all__ = ["Limits", "ServerSettings", "load_policies_file"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how many may wait.

    ``max_body_bytes``: larger bodies get 413. ``max_tokens``: the most new tokens per choice (400 above).
    ``default_max_tokens``: used when a request names none. ``max_n``: choices per request.
    ``max_prompt_chars``: characters in all messages (or prompts) together. ``max_queue``: requests
    waiting for the model before new ones get 429. ``max_running``: requests decoding at once (the
    scheduler's ``max_batch``; a quarter of it, at least one, for reward-guided strategies).
    ``max_search``: the largest search width (``n``, ``candidates``, ``beam_width``, ``k`` ...) a
    request's strategy parameters may set.
    """

    max_body_bytes: int = 1_000_000
    max_tokens: int = 1024
    default_max_tokens: int = 256
    max_n: int = 4
    max_prompt_chars: int = 32_000
    max_queue: int = 64
    max_running: int = 16
    max_search: int = 16

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_tokens", "default_max_tokens", "max_n", "max_prompt_chars", "max_running",
                     "max_search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ConfigError("max_queue", f"must be a non-negative integer, got {self.max_queue!r}")
        if self.default_max_tokens > self.max_tokens:
            raise ConfigError("default_max_tokens", f"must be at most max_tokens ({self.max_tokens}), "
                                                    f"got {self.default_max_tokens}")


@dataclass
class ServerSettings:
    """Everything ``deal serve`` was started with.

    ``model`` is a model alias, folder or hub id (or the served model's name with ``base_url``);
    ``served_name`` is the id clients send as ``model`` (default: ``model``). ``api_keys`` empty means
    no authentication. ``policies`` are the operator's named policies (see :func:`load_policies_file`).
    """

    model: str = "smollm2"
    base_url: str | None = None
    remote_api_key: str | None = None
    served_name: str | None = None
    api_keys: tuple[str, ...] = ()
    policies: dict[str, Policy] = field(default_factory=dict)
    allow_model_rewards: bool = False
    limits: Limits = field(default_factory=Limits)
    device: str = "auto"

    @property
    def model_id(self) -> str:
        return self.served_name or self.model

    def policy_names(self) -> list[str]:
        """The operator's policies, then the built-in/registered ones they do not shadow."""
        return sorted(self.policies) + [n for n in list_policies() if n not in self.policies]

    def find_policy(self, name: str, field_name: str = "deal.policy") -> Policy:
        """The operator's policy ``name``, else the registered one; ConfigError listing the names otherwise."""
        if name in self.policies:
            return self.policies[name]
        try:
            return resolve_policy(name)
        except ConfigError:
            raise ConfigError(field_name, f"unknown policy {name!r}; this server's policies: "
                                          f"{', '.join(self.policy_names())}") from None


def _read_mapping(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("policies", f"{path} is not valid YAML: {exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ConfigError("policies", f"{path} is not valid JSON: {exc} (use .yaml/.yml for YAML)") from exc


def load_policies_file(path: str | Path) -> dict[str, Policy]:
    """Reads operator policies from JSON or YAML: ``{name: policy or reward spec}``, optionally under ``policies:``.

    Raises:
        ConfigError: a missing or unreadable file, a bad name, or an invalid spec (naming ``policies.NAME``).
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError("policies", f"no such file: {file}")
    data = _read_mapping(file)
    if isinstance(data, Mapping) and isinstance(data.get("policies"), Mapping) and len(data) == 1:
        data = data["policies"]
    if not isinstance(data, Mapping) or not data:
        raise ConfigError("policies", f"{file} must hold a non-empty mapping of policy name to policy or reward spec")
    policies: dict[str, Policy] = {}
    for name, spec in data.items():
        if not isinstance(name, str) or not name or ":" in name or not name.replace("-", "").replace("_", "")\
                .replace(".", "").isalnum():
            raise ConfigError("policies", f"policy names are letters, digits and _ . - (no ':'), got {name!r}")
        try:
            policies[name] = parse_policy(spec)
        except ConfigError as exc:
            raise ConfigError(f"policies.{name}.{exc.field}", str(exc).split(": ", 1)[-1]) from None
    return policies
