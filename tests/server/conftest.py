"""Live ``deal serve`` instances for the server tests: uvicorn in a thread on 127.0.0.1, a free port.

Most tests use the tiny random model (fast mechanics); a few marked ``embedded`` use SmolLM2.
Every server is stopped when its fixture ends.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

from shared_core.server import Limits, ServerSettings, create_app, load_policies_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POLICIES = {
    "brief": {"type": "length", "max_words": 5},
    "cooking": {"reward": {"type": "keywords", "words": ["onion", "pan"]}, "strategy": "deal",
                "params": {"top_k": 3, "lookahead": 2}, "description": "Talks about cooking."},
}
KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(settings: ServerSettings, model: Any) -> Iterator[str]:
    """Serves ``create_app(settings, model)`` with uvicorn in a thread; yields the base URL; always stops it."""
    import uvicorn

    app = create_app(settings, model)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"deal-serve-{port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="session")
def serve() -> Callable[[ServerSettings, Any], AbstractContextManager[str]]:
    """:func:`live_server` for test modules (a fixture, so no module imports this conftest by name)."""
    return live_server


@pytest.fixture(scope="session")
def policies_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("policies") / "policies.json"
    path.write_text(json.dumps(POLICIES))
    return path


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir: str, policies_file: Path) -> ServerSettings:
    return ServerSettings(model=tiny_model_dir, served_name="tiny", policies=load_policies_file(policies_file),
                          limits=Limits(max_tokens=256, default_max_tokens=16, max_n=3, max_queue=16))


@pytest.fixture(scope="session")
def tiny_url(tiny_settings: ServerSettings, tiny_model: Any) -> Iterator[str]:
    """An open server (no keys) on the tiny model."""
    with live_server(tiny_settings, tiny_model) as url:
        yield url


@pytest.fixture(scope="session")
def guarded_url(tiny_model_dir: str, tiny_model: Any) -> Iterator[str]:
    """A server with an API key and tight limits: 2 kB bodies, 32 tokens, n <= 2, one request decoding, one waiting."""
    settings = ServerSettings(model=tiny_model_dir, served_name="tiny", api_keys=(KEY, "second-key"),
                              limits=Limits(max_body_bytes=2000, max_tokens=600, default_max_tokens=8, max_n=2,
                                            max_prompt_chars=500, max_queue=1, max_running=1))
    with live_server(settings, tiny_model) as url:
        yield url


@pytest.fixture(scope="session")
def fuzz_url(tiny_model_dir: str, tiny_model: Any) -> Iterator[str]:
    """A server for fuzzing: no keys, at most 8 new tokens (4 by default), so every example is cheap."""
    settings = ServerSettings(model=tiny_model_dir, served_name="tiny",
                              limits=Limits(max_tokens=8, default_max_tokens=4, max_n=2, max_queue=8))
    with live_server(settings, tiny_model) as url:
        yield url
