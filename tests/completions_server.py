"""A small OpenAI-compatible completions server for tests, backed by a local model, on 127.0.0.1.

It answers the way vLLM does for what deal's remote backend asks: ``/v1/models`` (with
``max_model_len``), ``/v1/completions`` with token-id prompts (one or a list), ``n``, ``max_tokens``,
``temperature``/``top_p``/``top_k``, ``seed``, ``stop``, ``logprobs=k`` (ids as ``"token_id:N"``),
``return_token_ids`` and ``stream``; ``/tokenize`` (text or chat messages) and ``/detokenize``.
Faults are injected per test: a queue of HTTP statuses to answer with first, a delay before answering,
endpoints switched off, log-probs left out. Every request's JSON body is recorded.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from shared_core.models import LocalModel


@dataclass
class Faults:
    """What the server does wrong, set by a test."""

    statuses: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)  # answered first, in order
    delay: float = 0.0  # seconds before each completions answer
    no_logprobs: bool = False  # ignore logprobs= (a server without them)
    no_token_ids: bool = False  # neither token_ids nor token_id: strings (text only)
    no_tokenize: bool = False  # /tokenize and /detokenize answer 404
    omit_eos_id: bool = False  # leave the EOS token out of the returned ids (like servers that elide it)
    eos_after: int | None = None  # emit EOS as the n-th generated token (random tiny models rarely end)
    no_models: bool = False  # /v1/models answers 404


class CompletionsServer:
    """The server; ``with CompletionsServer(model) as server: server.base_url``."""

    def __init__(self, model: LocalModel, served_name: str = "tiny", max_model_len: int = 512) -> None:
        self.model = model
        self.served_name = served_name
        self.max_model_len = max_model_len
        self.faults = Faults()
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # one forward at a time
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- generation -----------------------------------------------------------------------------

    def _logits(self, ids: list[int]) -> torch.Tensor:
        with self._lock, torch.no_grad():
            out = self.model.model(input_ids=torch.tensor([ids]), logits_to_keep=1)
        return out.logits[0, -1].float()

    def generate_one(self, prompt: list[int], body: dict[str, Any], seed: int | None) -> dict[str, Any]:
        max_tokens = int(body.get("max_tokens") or 16)
        temperature = float(body.get("temperature", 1.0))
        top_k = int(body.get("top_k") or 0)
        want = body.get("logprobs")
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
        ids: list[int] = []
        lps: list[float] = []
        tops: list[dict[str, float]] = []
        finish = "length"
        penalty = float(body.get("repetition_penalty") or 1.0)
        eos = min(self.model.eos_token_ids)
        for _ in range(max_tokens):
            logits = self._logits(prompt + ids)
            if penalty != 1.0:  # vLLM's rule: every token of the prompt and the output so far
                seen = torch.tensor(sorted(set(prompt + ids)))
                values = logits[seen]
                logits[seen] = torch.where(values > 0, values / penalty, values * penalty)
            if self.faults.eos_after is not None and len(ids) + 1 >= self.faults.eos_after:
                logits[eos] = logits.max() + 10.0
            logprobs = torch.log_softmax(logits, -1)
            if temperature == 0:
                token = int(logits.argmax())
            else:
                scores = logits / temperature
                if top_k > 0:
                    kth = torch.topk(scores, min(top_k, scores.shape[-1])).values[-1]
                    scores = scores.masked_fill(scores < kth, float("-inf"))
                token = int(torch.multinomial(scores.softmax(-1), 1, generator=generator))
            ids.append(token)
            lps.append(float(logprobs[token]))
            if want is not None:
                top = torch.topk(logprobs, max(int(want), 1))
                entry = {f"token_id:{int(t)}": float(v) for v, t in zip(top.values, top.indices)}
                entry[f"token_id:{token}"] = float(logprobs[token])
                tops.append(entry)
            if token in self.model.eos_token_ids:
                finish = "stop"
                break
            text = self.model.decode(ids)
            if any(s in text for s in stops):
                finish = "stop"
                break
        text = self.model.decode(ids)
        for s in stops:
            if s in text:
                text = text[: text.find(s)]
        if self.faults.omit_eos_id and ids and ids[-1] in self.model.eos_token_ids:
            ids, lps, tops = ids[:-1], lps[:-1], tops[:-1]
        choice: dict[str, Any] = {"text": text, "finish_reason": finish, "logprobs": None}
        if want is not None and not self.faults.no_logprobs:
            tokens = [f"token_id:{t}" for t in ids] if not self.faults.no_token_ids else [self.model.decode([t]) for t in ids]
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": lps,
                                  "top_logprobs": tops if int(want) > 0 else None, "text_offset": [0] * len(ids)}
        if body.get("return_token_ids") and not self.faults.no_token_ids:
            choice["token_ids"] = ids
        return choice

    # -- the app --------------------------------------------------------------------------------

    def app(self) -> Any:
        app = FastAPI()

        def fault() -> Any:
            if self.faults.statuses:
                status, headers = self.faults.statuses.popleft()
                return JSONResponse({"error": {"message": f"injected {status}"}}, status_code=status, headers=headers)
            return None

        @app.get("/v1/models")
        def models() -> Any:
            if self.faults.no_models:
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            return fault() or {"object": "list", "data": [
                {"id": self.served_name, "object": "model", "max_model_len": self.max_model_len}]}

        @app.post("/tokenize")
        async def tokenize(request: Request) -> Any:
            body = await request.json()
            if self.faults.no_tokenize:
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            if "messages" in body:
                ids = self.model.render(body["messages"])
            else:
                ids = self.model.encode(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True)))
            return {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len}

        @app.post("/detokenize")
        async def detokenize(request: Request) -> Any:
            body = await request.json()
            if self.faults.no_tokenize:
                return JSONResponse({"detail": "Not Found"}, status_code=404)
            return {"prompt": self.model.decode(body["tokens"])}

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            body = await request.json()
            self.requests.append(body)
            if self.faults.delay:
                import asyncio

                await asyncio.sleep(self.faults.delay)
            injected = fault()
            if injected is not None:
                return injected
            if body.get("model") != self.served_name:
                return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist."}},
                                    status_code=404)
            prompt = body["prompt"]
            prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt]
            if any(not isinstance(p, list) for p in prompts):
                return JSONResponse({"error": {"message": "this test server takes token-id prompts"}}, status_code=400)
            if any(len(p) + int(body.get("max_tokens") or 16) > self.max_model_len for p in prompts):
                return JSONResponse({"error": {"message": "maximum context length exceeded"}}, status_code=400)
            n = int(body.get("n") or 1)
            seed = body.get("seed")
            if body.get("prompt_logprobs") is not None and not self.faults.no_logprobs:
                with self._lock, torch.no_grad():
                    logits = self.model.model(input_ids=torch.tensor([prompts[0]])).logits[0].float()
                scores = torch.log_softmax(logits, -1)
                entries: list[Any] = [None] + [
                    {str(t): {"logprob": float(scores[i, t]), "rank": 1}} for i, t in enumerate(prompts[0][1:])]
                choice = self.generate_one(prompts[0], body, seed)
                choice.update(index=0, prompt_logprobs=entries)
                return {"id": "cmpl-test", "object": "text_completion", "choices": [choice]}
            if body.get("stream"):
                return StreamingResponse(self._stream(prompts[0], body, seed), media_type="text/event-stream")
            choices = []
            for p in prompts:
                for j in range(n):
                    choice = self.generate_one(p, body, None if seed is None else int(seed) + j)
                    choice["index"] = len(choices)
                    choices.append(choice)
            return {"id": "cmpl-test", "object": "text_completion", "model": self.served_name, "choices": choices,
                    "usage": {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 0}}

        return app

    def _stream(self, prompt: list[int], body: dict[str, Any], seed: Any) -> Iterator[str]:
        choice = self.generate_one(prompt, dict(body, logprobs=None), None if seed is None else int(seed))
        ids = choice.get("token_ids") or []
        for i, token in enumerate(ids):
            last = i == len(ids) - 1
            chunk: dict[str, Any] = {"index": 0, "text": self.model.decode([token]),
                                     "finish_reason": choice["finish_reason"] if last else None, "logprobs": None}
            if body.get("return_token_ids") and not self.faults.no_token_ids:
                chunk["token_ids"] = [token]
            yield f"data: {json.dumps({'choices': [chunk]})}\n\n"
        if not ids:
            yield f"data: {json.dumps({'choices': [{'index': 0, 'text': '', 'finish_reason': choice['finish_reason']}]})}\n\n"
        yield "data: [DONE]\n\n"

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> CompletionsServer:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test completions server did not start")
            time.sleep(0.02)
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)


def free_port() -> int:
    """A port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
