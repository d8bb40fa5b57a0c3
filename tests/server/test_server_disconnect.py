"""A client that goes away mid-request stops its decoding within a step: no more forward passes, the model free."""

from __future__ import annotations

import re
import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SLOW = {"model": "tiny", "messages": [{"role": "user", "content": "Go on."}], "max_tokens": 200,
        "deal": {"strategy": "deal", "reward": {"type": "keywords", "words": ["x"]},
                 "params": {"top_k": 8, "lookahead": 4}}}


def forward_passes(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    match = re.search(r'deal_forward_passes_total\{model="policy",strategy="deal"\} ([0-9.e+]+)', text)
    return float(match.group(1)) if match else 0.0


def cancelled_requests(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(float(v) for v in re.findall(r'deal_requests_total\{[^}]*status="cancelled"[^}]*\} ([0-9.e+]+)', text))


def wait_idle(url: str, bound: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < bound:
        stats = httpx.get(url + "/health").json()
        if stats["running"] == 0 and stats["queue_depth"] == 0:
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"still decoding {bound} s after the client left: {stats}")


def test_full_run_is_long_enough_to_interrupt(tiny_url: str) -> None:
    """The reference: the whole slow request takes over 150 forward passes; an interrupted one stays under 100.

    Counted in passes, not seconds: how long 150 passes take depends on the machine.
    """
    before = forward_passes(tiny_url)
    response = httpx.post(tiny_url + "/v1/chat/completions", json=SLOW, timeout=120)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] > 100
    assert forward_passes(tiny_url) - before > 150


def test_stream_disconnect_cancels_decoding(tiny_url: str) -> None:
    before_passes, before_cancelled = forward_passes(tiny_url), cancelled_requests(tiny_url)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", tiny_url + "/v1/chat/completions", json={**SLOW, "stream": True}) as response:
            lines = response.iter_lines()
            seen = [next(lines) for _ in range(6)]  # a few events: decoding is under way
            assert any('"content"' in line for line in seen)
        # leaving the block closes the connection mid-stream
    assert wait_idle(tiny_url, 2.0) < 2.0
    spent = forward_passes(tiny_url) - before_passes
    turns = httpx.get(tiny_url + "/health").json()["serial_turns"]  # the scheduler's decoding steps
    time.sleep(0.3)
    assert httpx.get(tiny_url + "/health").json()["serial_turns"] == turns  # no step after the stop
    assert forward_passes(tiny_url) - before_passes == spent  # no more model calls after the stop
    assert spent < 100  # far less than the full run
    assert cancelled_requests(tiny_url) == before_cancelled + 1
    quick = httpx.post(tiny_url + "/v1/chat/completions", timeout=10,
                       json={"model": "tiny", "messages": SLOW["messages"], "max_tokens": 3})
    assert quick.status_code == 200  # the model is free for the next call


def test_non_streaming_disconnect_cancels_decoding(tiny_url: str) -> None:
    """A raw socket sends the request and hangs up before the answer: the ASGI disconnect stops decoding."""
    import json

    before = forward_passes(tiny_url)
    body = json.dumps(SLOW).encode()
    parsed = urlparse(tiny_url)
    with socket.create_connection((parsed.hostname, parsed.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        deadline = time.monotonic() + 10
        while httpx.get(tiny_url + "/health").json()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
    assert wait_idle(tiny_url, 2.0) < 2.0
    spent = forward_passes(tiny_url) - before
    time.sleep(0.3)
    assert forward_passes(tiny_url) - before == spent < 100
