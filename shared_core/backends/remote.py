"""Remote engines over an OpenAI-compatible ``/v1/completions`` API (vLLM, SGLang, llama.cpp server).

:func:`connect_model` returns a :class:`RemoteModel`: a handle ``generate`` and ``stream`` take exactly
as they take ``load_model``'s. Prompts are rendered here (chat template included) and sent as token
ids, so the server's prefix cache serves the prefixes that searches share; every reward is scored in
this process. What the server must offer is declared in ``RemoteModel.capabilities``
(:mod:`shared_core.backends.capabilities`); a strategy that needs more is refused before any request.

Failures are :class:`BackendError` subclasses: :class:`BackendConnectionError` (server unreachable),
:class:`BackendTimeoutError` (no answer in time), :class:`BackendRequestError` (4xx: a bad model id, a
missing key, a limit exceeded), :class:`BackendServerError` (5xx), :class:`BackendFeatureError` (the
server lacks something the strategy needs, e.g. log-probs). Transient failures (connection errors,
429, 502, 503, 504) are retried with exponential backoff, at most ``max_retries`` times.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from shared_core.backends.base import Completion
from shared_core.backends.capabilities import REMOTE_CAPABILITIES, check_vocabulary
from shared_core.errors import ConfigError, DealError
from shared_core.models import EMBEDDED_MODELS, LocalModel
from shared_core.result import GenerationStats

__all__ = [
    "BackendConnectionError",
    "BackendError",
    "BackendFeatureError",
    "BackendRequestError",
    "BackendServerError",
    "BackendTimeoutError",
    "Completion",
    "RemoteModel",
    "ServerTokenizer",
    "connect_model",
    "served_model",
]

#: HTTP statuses worth another try: rate limited, bad gateway, unavailable, gateway timeout.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_TIMEOUT = 120.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 8.0
_TOKEN_ID_PREFIX = "token_id:"


# --------------------------------------------------------------------------- errors


class BackendError(DealError):
    """A remote backend failed; ``url`` is the endpoint, ``status`` the HTTP status when there was one."""

    def __init__(self, message: str, *, url: str = "", status: int | None = None, body: str = "") -> None:
        self.url = url
        self.status = status
        self.body = body
        super().__init__(message)


class BackendConnectionError(BackendError, ConnectionError):
    """The server could not be reached (refused, DNS, reset), after the allowed retries."""


class BackendTimeoutError(BackendError, TimeoutError):
    """The server did not answer within the timeout."""


class BackendRequestError(BackendError):
    """The server rejected the request (HTTP 4xx): a bad model id, a missing API key, a limit exceeded."""


class BackendServerError(BackendError):
    """The server failed (HTTP 5xx), after the allowed retries for 502/503/504."""


class BackendFeatureError(BackendError):
    """The server lacks a feature a strategy needs (log-probs, token ids, tokenization endpoints)."""


# --------------------------------------------------------------------------- results


def _count(stats: GenerationStats | None, key: str, n: float = 1) -> None:
    if stats is not None:
        stats.extra[key] = stats.extra.get(key, 0) + n


# --------------------------------------------------------------------------- tokenizers


class ServerTokenizer:
    """The server's own tokenizer through its ``/tokenize`` and ``/detokenize`` endpoints (vLLM, SGLang).

    Used when no local tokenizer is given or found. Every call is a round trip (decoded texts are
    cached), so a local tokenizer (``connect_model(..., tokenizer=...)``) is much faster.
    """

    chat_template = "server"  # the server applies its own template (``/tokenize`` with messages)

    def __init__(self, model: RemoteModel) -> None:
        self._model = model
        self._decoded: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()
        self.eos_token_id: int | None = None
        self.pad_token_id: int | None = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        data = self._model.post("/tokenize", {"model": self._model.name, "prompt": text,
                                              "add_special_tokens": add_special_tokens})
        return {"input_ids": [int(t) for t in data["tokens"]]}

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None) -> list[int]:
        payload: dict[str, Any] = {"model": self._model.name, "messages": [dict(m) for m in messages],
                                   "add_generation_prompt": True, "add_special_tokens": False}
        if tools:
            payload["tools"] = list(tools)
        return [int(t) for t in self._model.post("/tokenize", payload)["tokens"]]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        key = tuple(int(i) for i in ids)
        if not key:
            return ""
        with self._lock:
            if key in self._decoded:
                return self._decoded[key]
        text = str(self._model.post("/detokenize", {"model": self._model.name, "tokens": list(key)})["prompt"])
        with self._lock:
            self._decoded[key] = text
            while len(self._decoded) > 4096:
                self._decoded.popitem(last=False)
        return text

    def batch_decode(self, batch: Sequence[Sequence[int]], skip_special_tokens: bool = True) -> list[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def convert_tokens_to_ids(self, token: str) -> None:
        return None


def _load_tokenizer(source: Any) -> Any:
    """A HF tokenizer from a tokenizer object, a local folder, an embedded alias or a hub id."""
    if not isinstance(source, str):
        return source
    from transformers import AutoTokenizer

    from shared_core.models import resolve_model_source

    location = resolve_model_source(source) if source in EMBEDDED_MODELS or not Path(source).exists() else source
    return AutoTokenizer.from_pretrained(location)


# --------------------------------------------------------------------------- the model handle


class RemoteModel:
    """A model served by an OpenAI-compatible engine; ``generate(remote, ...)`` decodes with it.

    It offers what strategies need from a model besides forward passes: ``name``, ``tokenizer``,
    ``encode``/``decode``, ``render`` (the chat template), ``eos_token_ids``, ``context_window``; and
    the backend operations :meth:`propose` (n continuations of a token-id prefix in one request),
    :meth:`complete` (several prefixes in one request), :meth:`top_next` (the top-k next tokens) and
    :meth:`stream_tokens`. ``stats`` passed to them count requests and tokens in ``stats.extra``.
    """

    kind = "remote"
    #: The most top log-probs per position strategies ask for unless they need more (vLLM's ``--max-logprobs``
    #: default); a server with a lower limit answers 400 (:class:`BackendRequestError`).
    max_logprobs = 20
    device = torch.device("cpu")  # where rewards' tensors live; the model itself is on the server
    dtype = torch.float32

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES,
                 backoff: float = DEFAULT_BACKOFF, capabilities: Iterable[str] | None = None) -> None:
        import httpx

        self.base_url = _normalize_url(base_url)
        self.api_key = api_key
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.capabilities: frozenset[str] = (REMOTE_CAPABILITIES if capabilities is None
                                             else check_vocabulary(capabilities, "capabilities"))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(self.timeout, connect=connect_timeout))
        self.name = ""
        self.tokenizer: Any = None
        self.eos_token_ids: frozenset[int] = frozenset()
        self.served: dict[str, Any] = {}
        self._context_window: int | None = None
        self.tokenizer_source = ""

    # -- what strategies read from a model ---------------------------------------------------------

    @property
    def source(self) -> str:
        return f"{self.base_url} ({self.name})"

    @property
    def backend_name(self) -> str:
        """How errors name this backend: ``remote http://host:port (model)``."""
        return f"remote {self.source}"

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"RemoteModel({self.base_url!r}, model={self.name!r})"

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_window(self) -> int:
        if self._context_window is not None:
            return self._context_window
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if isinstance(limit, int) and 0 < limit < 10**7 else 10**7

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return int(pad) if pad is not None else (min(self.eos_token_ids) if self.eos_token_ids else 0)

    @cached_property
    def layout_token_ids(self) -> frozenset[int]:
        return LocalModel.layout_token_ids.func(self)  # type: ignore[attr-defined]

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def render_chat(self, messages: Sequence[Mapping[str, Any]], *,
                    tools: Sequence[Mapping[str, Any]] | None = None) -> str:
        return LocalModel.render_chat(self, messages, tools=tools)  # type: ignore[arg-type]

    def render(self, prompt: str | Sequence[Mapping[str, Any]], *, chat: bool | None = None,
               tools: Sequence[Mapping[str, Any]] | None = None) -> list[int]:
        """Token ids for a prompt, rendered as a local model renders it (the served model's chat template)."""
        if isinstance(self.tokenizer, ServerTokenizer):
            if isinstance(prompt, str) and chat is False:
                return self.encode(prompt, add_special_tokens=True)
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            return self.tokenizer.encode_chat(messages, tools)
        return LocalModel.render(self, prompt, chat=chat, tools=tools)  # type: ignore[arg-type]

    # -- HTTP ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the HTTP connection pool."""
        self._client.close()

    def _retry_wait(self, attempt: int, retry_after: str | None) -> float:
        wait = min(self.backoff * (2 ** attempt), MAX_BACKOFF) * (0.75 + 0.5 * random.random())
        if retry_after:
            try:
                wait = max(wait, min(float(retry_after), MAX_BACKOFF))
            except ValueError:
                pass
        return wait

    def _send(self, method: str, path: str, payload: Mapping[str, Any] | None, stats: GenerationStats | None,
              stream: bool = False) -> Any:
        """Sends one request with retries; returns the httpx response (open, when ``stream``)."""
        import httpx

        url = self.base_url + path
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                request = self._client.build_request(method, url, json=payload)
                response = self._client.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                if attempt < self.max_retries:
                    _count(stats, "retries")
                    time.sleep(self._retry_wait(attempt, None))
                    attempt += 1
                    continue
                raise BackendConnectionError(
                    f"cannot reach {url} ({type(exc).__name__}: {exc}) after {_attempts(attempt)}; is the "
                    "server running and the base_url right?", url=url) from exc
            except httpx.TimeoutException as exc:
                raise BackendTimeoutError(f"{url} did not answer within {self.timeout:g}s "
                                          f"({type(exc).__name__}); raise timeout= for long generations",
                                          url=url) from exc
            except httpx.HTTPError as exc:
                raise BackendConnectionError(f"request to {url} failed: {type(exc).__name__}: {exc}", url=url) from exc
            _count(stats, "request_seconds", time.perf_counter() - started)
            if response.status_code < 400:
                return response
            body = _read_body(response)
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                _count(stats, "retries")
                time.sleep(self._retry_wait(attempt, response.headers.get("retry-after")))
                attempt += 1
                continue
            raise _status_error(url, response.status_code, body, attempt)

    def post(self, path: str, payload: Mapping[str, Any], stats: GenerationStats | None = None) -> Any:
        """POSTs JSON and returns the decoded answer (retried as the module says)."""
        response = self._send("POST", path, payload, stats)
        try:
            return response.json()
        except ValueError as exc:
            raise BackendServerError(f"{self.base_url + path} answered with something that is not JSON: "
                                     f"{response.text[:200]!r}", url=self.base_url + path,
                                     status=response.status_code) from exc

    def get(self, path: str) -> Any:
        response = self._send("GET", path, None, None)
        try:
            return response.json()
        except ValueError as exc:
            raise BackendServerError(f"{self.base_url + path} answered with something that is not JSON",
                                     url=self.base_url + path, status=response.status_code) from exc

    # -- completions --------------------------------------------------------------------------------

    def _payload(self, prompt: Any, *, n: int, max_tokens: int, temperature: float, top_p: float, top_k: int,
                 seed: int | None, stop: Sequence[str], logprobs: int | None,
                 repetition_penalty: float | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.name, "prompt": prompt, "n": n, "max_tokens": max_tokens, "temperature": temperature,
            "top_p": top_p, "stream": False,
            # vLLM / SGLang extensions (other servers ignore them): ids instead of token strings
            "return_token_ids": True, "return_tokens_as_token_ids": True, "skip_special_tokens": False,
        }
        if top_k > 0:
            payload["top_k"] = top_k
        if seed is not None:
            payload["seed"] = int(seed) % (2**31 - 1)
        if stop:
            payload["stop"] = list(stop)
        if logprobs is not None:
            payload["logprobs"] = int(logprobs)
        if repetition_penalty is not None and repetition_penalty != 1.0:
            payload["repetition_penalty"] = float(repetition_penalty)
        return payload

    def complete(self, prompts: Sequence[Sequence[int]], *, n: int = 1, max_tokens: int, temperature: float = 0.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: Sequence[str] = (),
                 logprobs: int | None = None, repetition_penalty: float | None = None,
                 stats: GenerationStats | None = None) -> list[list[Completion]]:
        """Continuations of several token-id prompts in ONE request: ``n`` per prompt, in prompt order.

        ``logprobs=k`` asks for the top-k log-probs at each generated position (a server that returns
        none raises :class:`BackendFeatureError`).
        """
        if not prompts:
            return []
        body: Any = [list(map(int, p)) for p in prompts]
        payload = self._payload(body if len(body) > 1 else body[0], n=n, max_tokens=max_tokens,
                                temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop,
                                logprobs=logprobs, repetition_penalty=repetition_penalty)
        data = self.post("/v1/completions", payload, stats)
        choices = data.get("choices") if isinstance(data, Mapping) else None
        if not isinstance(choices, list) or len(choices) != len(body) * n:
            raise BackendFeatureError(
                f"{self.base_url}/v1/completions returned {len(choices) if isinstance(choices, list) else 'no'} "
                f"choices for {len(body)} prompt(s) x n={n}; the server must accept token-id prompts (a list of "
                "them in one request) and n", url=self.base_url + "/v1/completions")
        choices = sorted(choices, key=lambda c: int(c.get("index", 0)))
        parsed = [self._parse_choice(c, logprobs) for c in choices]
        _count(stats, "requests")
        _count(stats, "prompt_tokens_sent", sum(len(p) for p in body))
        _count(stats, "tokens_proposed", sum(len(c.token_ids) for c in parsed))
        if any(c.ids_from_text for c in parsed):
            _count(stats, "token_ids_from_text", sum(1 for c in parsed if c.ids_from_text))
        return [parsed[i * n:(i + 1) * n] for i in range(len(body))]

    def propose(self, prefix_ids: Sequence[int], n: int, max_tokens: int, stop: Sequence[str] = (),
                temperature: float = 1.0, seed: int | None = None, *, top_p: float = 1.0, top_k: int = 0,
                logprobs: int | None = 0, repetition_penalty: float | None = None,
                stats: GenerationStats | None = None) -> list[Completion]:
        """``n`` continuations of ``prefix_ids`` in one request, with the sampled tokens' log-probs."""
        return self.complete([prefix_ids], n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             top_k=top_k, seed=seed, stop=stop, logprobs=logprobs,
                             repetition_penalty=repetition_penalty, stats=stats)[0]

    def top_next(self, prefix_ids: Sequence[int], k: int,
                 stats: GenerationStats | None = None) -> tuple[list[int], list[float]]:
        """The ``k`` most likely next tokens after ``prefix_ids`` and their log-probs (best first), one request."""
        completion = self.complete([prefix_ids], n=1, max_tokens=1, temperature=0.0, logprobs=k, stats=stats)[0][0]
        assert completion.top is not None
        top = completion.top[0] if completion.top else []
        return [t for t, _ in top], [lp for _, lp in top]

    def prompt_logprobs(self, ids: Sequence[int], stats: GenerationStats | None = None) -> list[float | None]:
        """The log-prob of each token of ``ids`` given the tokens before it (``None`` for the first), one request.

        Uses vLLM's ``prompt_logprobs``; a server that returns none raises :class:`BackendFeatureError`.
        """
        payload = self._payload(list(map(int, ids)), n=1, max_tokens=1, temperature=0.0, top_p=1.0, top_k=0,
                                seed=None, stop=(), logprobs=None, repetition_penalty=None)
        payload["prompt_logprobs"] = 0
        data = self.post("/v1/completions", payload, stats)
        _count(stats, "requests")
        _count(stats, "prompt_tokens_sent", len(payload["prompt"]))
        choices = data.get("choices") or [{}]
        raw = choices[0].get("prompt_logprobs") or data.get("prompt_logprobs")
        if not isinstance(raw, list) or len(raw) != len(payload["prompt"]):
            raise BackendFeatureError(f"{self.base_url}/v1/completions returned no prompt_logprobs; the server must "
                                      "support them (vLLM does)", url=self.base_url + "/v1/completions")
        out: list[float | None] = []
        for token, entry in zip(payload["prompt"], raw):
            if not entry:
                out.append(None)
                continue
            found = entry.get(str(token), entry.get(f"{_TOKEN_ID_PREFIX}{token}"))
            value = found.get("logprob") if isinstance(found, Mapping) else found
            out.append(None if value is None else float(value))
        return out

    def stream_tokens(self, prefix_ids: Sequence[int], *, max_tokens: int, temperature: float = 0.0,
                      top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: Sequence[str] = (),
                      repetition_penalty: float | None = None,
                      stats: GenerationStats | None = None) -> Iterator[tuple[list[int], str | None]]:
        """One streamed continuation: yields ``(new token ids, finish_reason or None)`` as the server sends them.

        Closing the iterator closes the connection (vLLM then aborts the request).
        """
        payload = self._payload(list(map(int, prefix_ids)), n=1, max_tokens=max_tokens, temperature=temperature,
                                top_p=top_p, top_k=top_k, seed=seed, stop=stop, logprobs=None,
                                repetition_penalty=repetition_penalty)
        payload["stream"] = True
        response = self._send("POST", "/v1/completions", payload, stats, stream=True)
        _count(stats, "requests")
        _count(stats, "prompt_tokens_sent", len(payload["prompt"]))
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError as exc:
                    raise BackendServerError(f"{self.base_url}/v1/completions streamed a bad event: {data[:200]!r}",
                                             url=self.base_url + "/v1/completions") from exc
                if "error" in chunk and not chunk.get("choices"):
                    raise BackendServerError(f"{self.base_url}/v1/completions failed while streaming: "
                                             f"{chunk['error']}", url=self.base_url + "/v1/completions")
                for choice in chunk.get("choices") or []:
                    parsed = self._parse_choice(choice, None)
                    _count(stats, "tokens_proposed", len(parsed.token_ids))
                    if parsed.ids_from_text:
                        _count(stats, "token_ids_from_text")
                    if parsed.token_ids or parsed.finish_reason:
                        yield parsed.token_ids, parsed.finish_reason
        except Exception as exc:
            import httpx

            if isinstance(exc, httpx.TimeoutException):
                raise BackendTimeoutError(f"{self.base_url}/v1/completions stopped streaming for {self.timeout:g}s",
                                          url=self.base_url + "/v1/completions") from exc
            if isinstance(exc, httpx.HTTPError):
                raise BackendConnectionError(f"{self.base_url}/v1/completions stream broke: {exc}",
                                             url=self.base_url + "/v1/completions") from exc
            raise
        finally:
            response.close()

    def _parse_choice(self, choice: Mapping[str, Any], top_k: int | None) -> Completion:
        lp = choice.get("logprobs") or None
        text = str(choice.get("text") or "")
        ids_from_text = False
        ids = choice.get("token_ids")
        if ids is None and lp and lp.get("tokens") is not None:
            ids = [self._token_id(t) for t in lp["tokens"]]
        if ids is None:
            ids = self.encode(text) if text else []
            ids_from_text = True
        logprobs = None
        top = None
        if top_k is not None:
            if not lp or lp.get("token_logprobs") is None:
                raise BackendFeatureError(
                    f"{self.base_url}/v1/completions returned no log-probs although logprobs={top_k} was asked; "
                    "this strategy needs a server that returns them (vLLM, SGLang, llama.cpp server do)",
                    url=self.base_url + "/v1/completions")
            logprobs = [float(x) if x is not None else float("-inf") for x in lp["token_logprobs"]]
            if top_k > 0:
                raw = lp.get("top_logprobs")
                if raw is None:
                    raise BackendFeatureError(
                        f"{self.base_url}/v1/completions returned no top_logprobs for logprobs={top_k}",
                        url=self.base_url + "/v1/completions")
                top = []
                for entry in raw:
                    pairs = sorted(((self._token_id(t), float(v)) for t, v in (entry or {}).items()),
                                   key=lambda p: -p[1])
                    top.append(pairs[:top_k])
        return Completion(token_ids=[int(i) for i in ids], text=text, finish_reason=choice.get("finish_reason"),
                          logprobs=logprobs, top=top, ids_from_text=ids_from_text)

    def _token_id(self, token: Any) -> int:
        if isinstance(token, int):
            return token
        token = str(token)
        if token.startswith(_TOKEN_ID_PREFIX):
            return int(token[len(_TOKEN_ID_PREFIX):])
        found = self.tokenizer.convert_tokens_to_ids(token) if self.tokenizer is not None else None
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if isinstance(found, int) and found != unk:
            return found
        encoded = self.encode(token) if self.tokenizer is not None else []
        if len(encoded) == 1:
            return encoded[0]
        raise BackendFeatureError(
            f"{self.base_url} returned the token {token!r} as text, which does not map to one token id; the "
            "server must return token ids (vLLM: return_tokens_as_token_ids)", url=self.base_url)


def _normalize_url(base_url: str) -> str:
    if not isinstance(base_url, str) or not base_url.strip().startswith(("http://", "https://")):
        raise ConfigError("base_url", f"must be an http(s) URL such as 'http://127.0.0.1:8000', got {base_url!r}")
    url = base_url.strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _attempts(retries: int) -> str:
    return "1 attempt" if retries == 0 else f"{retries + 1} attempts"


def _read_body(response: Any) -> str:
    """The start of an error answer's body; the response is closed (its connection goes back to the pool)."""
    try:
        response.read()
        return response.text[:500]
    except Exception:  # noqa: BLE001 - the status is what matters; the body is only a hint
        return ""
    finally:
        response.close()


def _status_error(url: str, status: int, body: str, retries: int) -> BackendError:
    detail = body
    try:
        parsed = json.loads(body)
        if isinstance(parsed, Mapping):
            error = parsed.get("error", parsed.get("detail", parsed.get("message", body)))
            detail = error.get("message", error) if isinstance(error, Mapping) else error
    except ValueError:
        pass
    tried = f" after {_attempts(retries)}" if retries else ""
    if status in (401, 403):
        return BackendRequestError(f"{url} refused the request (HTTP {status}{tried}): {detail}; pass api_key=",
                                   url=url, status=status, body=body)
    if status < 500:
        return BackendRequestError(f"{url} rejected the request (HTTP {status}{tried}): {detail}",
                                   url=url, status=status, body=body)
    return BackendServerError(f"{url} failed (HTTP {status}{tried}): {detail}", url=url, status=status, body=body)


# --------------------------------------------------------------------------- connecting


def _eos_from_folder(folder: str) -> set[int]:
    ids: set[int] = set()
    path = Path(folder) / "generation_config.json"
    if path.exists():
        try:
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
        except (OSError, ValueError):
            value = None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(int(v) for v in value)
    return ids


def connect_model(
    base_url: str,
    model: str | None = None,
    api_key: str | None = None,
    tokenizer: Any = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    capabilities: Iterable[str] | None = None,
) -> RemoteModel:
    """Connects to an OpenAI-compatible server (vLLM, SGLang, llama.cpp server) for ``generate``/``stream``.

    Args:
        base_url: the server's root, e.g. ``"http://127.0.0.1:8000"`` (a trailing ``/v1`` is accepted).
        model: the served model id; default: the only one ``/v1/models`` lists.
        api_key: sent as ``Authorization: Bearer ...``.
        tokenizer: a tokenizer object, folder, embedded alias or hub id. Default: the served model id
            when it is a local folder or an embedded alias (``"smollm2"``), else the server's own
            ``/tokenize`` and ``/detokenize`` endpoints (slower: a round trip per call).
        timeout: seconds to wait for an answer (a whole non-streamed completion).
        connect_timeout: seconds to wait for a connection.
        max_retries: retries of transient failures (connection errors, HTTP 429/502/503/504), with
            exponential backoff from ``backoff`` seconds (capped at 8 s, ``Retry-After`` honoured).
        capabilities: what the server offers (default: ``samples``, ``top_logprobs``,
            ``prompt_logprobs``); declare less for servers without log-probs.

    Raises:
        ConfigError: a bad ``base_url``, an unknown or ambiguous ``model``.
        BackendError: the server cannot be reached or fails (see the module docstring).

    Example:
        >>> remote = connect_model("http://127.0.0.1:8000", model="smollm2")   # doctest: +SKIP
        >>> generate(remote, "Say hi.", max_new_tokens=16).text               # doctest: +SKIP
    """
    for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(name, f"must be a positive number of seconds, got {value!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError("max_retries", f"must be an integer >= 0, got {max_retries!r}")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ConfigError("model", f"must be the served model id or None, got {model!r}")
    remote = RemoteModel(base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout,
                         max_retries=max_retries, backoff=backoff, capabilities=capabilities)
    try:
        _identify(remote, model)
        _attach_tokenizer(remote, tokenizer)
    except BaseException:
        remote.close()
        raise
    return remote


def served_model(remote: RemoteModel, model: str | None) -> tuple[str, dict[str, Any]]:
    """The model id to ask ``remote`` for and its ``/v1/models`` entry (empty when the server lists none).

    Without ``model`` the server must serve exactly one; a server without the list needs ``model``.

    Raises:
        ConfigError: ``model`` not served, or several served and none named.
    """
    try:
        listing = remote.get("/v1/models")
    except BackendRequestError as exc:
        if exc.status != 404 or model is None:  # a server without the list is fine when the model is named
            raise
        listing = {}
    served = [m for m in (listing.get("data") or []) if isinstance(m, Mapping) and m.get("id")]
    ids = [str(m["id"]) for m in served]
    if model is None:
        if len(ids) != 1:
            raise ConfigError("model", f"{remote.base_url} serves {len(ids)} models ({', '.join(ids) or 'none'}); "
                                       "name one with model=")
        model = ids[0]
    elif ids and model not in ids:
        raise ConfigError("model", f"{model!r} is not served by {remote.base_url}; served: {', '.join(ids)}")
    return model, dict(next((m for m in served if str(m["id"]) == model), {}))


def _identify(remote: RemoteModel, model: str | None) -> None:
    remote.name, remote.served = served_model(remote, model)
    limit = remote.served.get("max_model_len")
    if isinstance(limit, int) and limit > 0:
        remote._context_window = limit


def _attach_tokenizer(remote: RemoteModel, tokenizer: Any) -> None:
    eos: set[int] = set()
    if tokenizer is not None:
        remote.tokenizer = _load_tokenizer(tokenizer)
        remote.tokenizer_source = tokenizer if isinstance(tokenizer, str) else type(tokenizer).__name__
    else:
        candidates = [remote.name, str(remote.served.get("root") or "")]
        for candidate in candidates:
            if candidate and (candidate in EMBEDDED_MODELS or Path(candidate).is_dir()):
                remote.tokenizer = _load_tokenizer(candidate)
                remote.tokenizer_source = candidate
                break
        if remote.tokenizer is None:
            remote.tokenizer = ServerTokenizer(remote)
            remote.tokenizer_source = "server"
            try:
                remote.tokenizer("a")
            except BackendRequestError as exc:
                raise BackendFeatureError(
                    f"{remote.base_url} has no /tokenize endpoint and {remote.name!r} is not a local folder or an "
                    "embedded model; pass tokenizer= (a folder, an alias or a tokenizer object)",
                    url=remote.base_url + "/tokenize", status=exc.status) from exc
    source = remote.tokenizer_source
    if source in EMBEDDED_MODELS or Path(str(source)).is_dir():
        from shared_core.models import resolve_model_source

        eos |= _eos_from_folder(resolve_model_source(source) if source in EMBEDDED_MODELS else source)
    eos_id = getattr(remote.tokenizer, "eos_token_id", None)
    if eos_id is not None:
        eos.add(int(eos_id))
    remote.eos_token_ids = frozenset(eos)
    if getattr(remote.tokenizer, "pad_token_id", None) is None and eos_id is not None \
            and not isinstance(remote.tokenizer, ServerTokenizer):
        remote.tokenizer.pad_token = remote.tokenizer.eos_token
