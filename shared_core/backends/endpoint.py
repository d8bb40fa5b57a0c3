"""What an OpenAI-compatible server offers, asked of the server itself, once per process.

The adapters route a ``base_url`` call by it: a server with ``/v1/completions`` gets a
:class:`~shared_core.backends.remote.RemoteModel` the core decodes with; a chat-only one (a hosted
chat API) is reached through its chat endpoint with URIAL plus best-of-n reranking. Framework
adapters build a new model object per configured run, so connections are kept here (an LRU of
:data:`MAX_ENDPOINTS`), not on the objects.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_core.backends.capabilities import SAMPLES
from shared_core.backends.remote import BackendError, RemoteModel, connect_model, served_model

__all__ = ["MAX_ENDPOINTS", "Endpoint", "connect_endpoint", "has_completions"]

#: Servers (per model, key, tokenizer and limits) whose connection a process keeps.
MAX_ENDPOINTS = 32

_endpoints: OrderedDict[tuple[Any, ...], Endpoint] = OrderedDict()
_endpoints_lock = threading.Lock()


@dataclass(frozen=True)
class Endpoint:
    """A server as this process sees it: a completions handle (``remote``), or chat only (``chat_url``)."""

    name: str
    remote: RemoteModel | None = None
    chat_url: str | None = None

    @property
    def chat_only(self) -> bool:
        """Whether the server answers only chat requests: no completions, or a handle that cannot sample."""
        return self.remote is None or SAMPLES not in frozenset(self.remote.capabilities)

    @property
    def chat_base_url(self) -> str:
        """The ``.../v1`` URL a chat client of this server takes."""
        if self.chat_url is not None:
            return self.chat_url
        assert self.remote is not None
        return f"{self.remote.base_url}/v1"


def connect_endpoint(base_url: str, *, model: str | None, api_key: str | None, tokenizer: Any = None,
                     timeout: float | None = None, max_retries: int | None = None) -> Endpoint:
    """Connects once per (server, model, key, tokenizer, limits) in this process.

    Whether the server offers ``/v1/completions`` is detected (:func:`has_completions`), not assumed:
    with it, :func:`~shared_core.backends.remote.connect_model` gives the handle the core decodes
    with; without it the server is reached through its chat endpoint.
    """
    key = (base_url, model, api_key, tokenizer if isinstance(tokenizer, (str, type(None))) else id(tokenizer),
           timeout, max_retries)
    with _endpoints_lock:
        if key in _endpoints:
            _endpoints.move_to_end(key)
            return _endpoints[key]
    options: dict[str, Any] = {}
    if timeout is not None:
        options["timeout"] = timeout
    if max_retries is not None:
        options["max_retries"] = max_retries
    served, completions, root = has_completions(base_url, model=model, api_key=api_key, options=options)
    if completions:
        remote = connect_model(base_url, model=served, api_key=api_key, tokenizer=tokenizer, **options)
        endpoint = Endpoint(name=str(remote.name), remote=remote)
    else:
        endpoint = Endpoint(name=served, chat_url=root + "/v1")
    with _endpoints_lock:
        _endpoints[key] = endpoint
        while len(_endpoints) > MAX_ENDPOINTS:
            _endpoints.popitem(last=False)
    return endpoint


def has_completions(base_url: str, *, model: str | None, api_key: str | None,
                    options: Mapping[str, Any] | None = None) -> tuple[str, bool, str]:
    """``(served model id, whether /v1/completions exists, server root)``, asked of the server itself.

    The model id comes from ``/v1/models`` (the only one listed when ``model`` is None; a server without
    the list needs ``model``). The probe is a completions request for at most one token of an empty
    prompt: a server with the endpoint answers it or rejects the empty prompt (400); a server without
    the endpoint answers 404 or 405.

    Raises:
        ConfigError: ``model`` not served, or several served and none named.
        BackendError: the server cannot be reached or refuses the key.
    """
    probe = RemoteModel(base_url, api_key=api_key, **dict(options or {}))
    try:
        model, _ = served_model(probe, model)
        try:
            probe.post("/v1/completions", {"model": model, "prompt": "", "max_tokens": 1})
        except BackendError as exc:
            if exc.status in (404, 405):
                return model, False, probe.base_url
            if exc.status is None or exc.status in (401, 403):
                raise
        return model, True, probe.base_url
    finally:
        probe.close()
