"""``deal serve`` as a command: a subprocess on a free port, with a YAML policies file and an API key."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared_core.errors import ConfigError
from shared_core.server import load_policies_file


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.embedded
def test_serve_command_end_to_end(tmp_path: Path) -> None:
    """``deal serve`` with its defaults (the embedded SmolLM2) in a process of its own."""
    policies = tmp_path / "policies.yaml"
    policies.write_text("terse:\n  reward: {type: length, max_words: 3}\n  strategy: deal\n"
                        "  description: Three words.\n")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared_core.cli", "serve", "--served-name", "tiny", "--port", str(port), "--policies", str(policies), "--api-key", "k1", "--max-tokens", "16"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"deal serve did not start: {proc.stdout.read() if proc.stdout else ''}")
            time.sleep(0.2)
        auth = {"Authorization": "Bearer k1"}
        ids = [m["id"] for m in httpx.get(url + "/v1/models", headers=auth).json()["data"]]
        assert "tiny:terse" in ids
        response = httpx.post(url + "/v1/chat/completions", headers=auth, timeout=60, json={
            "model": "tiny:terse", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert response.status_code == 200 and response.json()["deal"]["policy"] == "terse"
        assert httpx.post(url + "/v1/chat/completions", json={"model": "tiny"}).status_code == 401
        too_many = httpx.post(url + "/v1/chat/completions", headers=auth, json={
            "model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 17})
        assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "max_tokens"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_policies_file_errors_name_the_policy(tmp_path: Path) -> None:
    bad = tmp_path / "p.json"
    bad.write_text('{"mine": {"type": "keywords", "words": 3}}')
    with pytest.raises(ConfigError) as info:
        load_policies_file(bad)
    assert info.value.field.startswith("policies.mine")
    remote = tmp_path / "r.yaml"
    remote.write_text("evil:\n  type: classifier\n  model: x\n  trust_remote_code: true\n")
    with pytest.raises(ConfigError, match="trust_remote_code"):
        load_policies_file(remote)
    with pytest.raises(ConfigError, match="no such file"):
        load_policies_file(tmp_path / "missing.yaml")


def test_base_url_without_a_server_is_a_clear_error() -> None:
    from shared_core.errors import DealError
    from shared_core.server import ServerSettings, load_served_model

    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(DealError, match="127.0.0.1"):
        load_served_model(ServerSettings(model="smollm2", base_url=url))


def test_limits_are_checked_when_the_server_is_configured() -> None:
    from shared_core.server import Limits

    with pytest.raises(ConfigError) as info:
        Limits(max_tokens=0)
    assert info.value.field == "max_tokens"
    with pytest.raises(ConfigError, match="default_max_tokens"):
        Limits(max_tokens=8, default_max_tokens=16)
