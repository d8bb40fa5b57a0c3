"""A small OpenAI-compatible chat server for tests, backed by a local model, on 127.0.0.1.

:class:`ChatServer` extends the test completions server with ``/v1/chat/completions`` (``n``,
``temperature``, ``max_tokens``, ``seed``, ``stop``, ``stream`` with a usage chunk) and, with
``completions=False``, serves no ``/v1/completions`` at all: a hosted chat API as the adapters meet one
(the route is absent, so the server answers 404 as such APIs do); with ``model_list=False`` it has no
``/v1/models`` either. Every chat request body is recorded,
and the answers given to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from completions_server import CompletionsServer
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from shared_core.models import LocalModel


class ChatServer(CompletionsServer):
    """``with ChatServer(model, completions=False) as server: server.base_url``; ``chat_requests`` records bodies."""

    def __init__(self, model: LocalModel, served_name: str = "tiny-chat", max_model_len: int = 2048,
                 completions: bool = False, model_list: bool = True) -> None:
        super().__init__(model, served_name=served_name, max_model_len=max_model_len)
        self.completions = completions
        self.model_list = model_list
        self.chat_requests: list[dict[str, Any]] = []
        self.chat_answers: list[list[str]] = []  # per request, the texts answered, in choice order

    def _answers(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        ids = self.model.render(body["messages"])
        body = dict(body, max_tokens=body.get("max_completion_tokens") or body.get("max_tokens"))
        seed = body.get("seed")
        n = int(body.get("n") or 1)
        answers = []
        for j in range(n):
            choice = self.generate_one(ids, dict(body, logprobs=None), None if seed is None else int(seed) + j)
            answers.append({"text": choice["text"], "finish_reason": choice["finish_reason"],
                            "tokens": len(self.model.encode(choice["text"]))})
        return answers

    def app(self) -> Any:
        app = super().app()
        dropped = {"/v1/completions"} if not self.completions else set()
        if not self.model_list:
            dropped.add("/v1/models")
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", "") not in dropped]

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            body = await request.json()
            self.chat_requests.append(body)
            if body.get("model") != self.served_name:
                return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not exist."}},
                                    status_code=404)
            prompt_tokens = len(self.model.render(body["messages"]))
            answers = self._answers(body)
            self.chat_answers.append([a["text"] for a in answers])
            if body.get("stream"):
                return StreamingResponse(self._chat_stream(answers[0], prompt_tokens), media_type="text/event-stream")
            choices = [{"index": i, "message": {"role": "assistant", "content": a["text"]},
                        "finish_reason": a["finish_reason"]} for i, a in enumerate(answers)]
            completion = sum(a["tokens"] for a in answers)
            return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": self.served_name,
                    "choices": choices, "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                                  "total_tokens": prompt_tokens + completion}}

        return app

    def _chat_stream(self, answer: dict[str, Any], prompt_tokens: int) -> Iterator[str]:
        base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 0, "model": self.served_name}
        words = answer["text"].split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                               "finish_reason": None}]}) + "\n\n"
        yield "data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {},
                                                           "finish_reason": answer["finish_reason"]}]}) + "\n\n"
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": answer["tokens"],
                 "total_tokens": prompt_tokens + answer["tokens"]}
        yield "data: " + json.dumps({**base, "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"
