"""A real vLLM server for the remote-backend tests: started once per session, stopped at the end.

Every test in this folder gets the ``vllm`` marker (``-m "not vllm"`` leaves them out). The
``vllm_server`` fixture yields the server's base URL without ``/v1`` (``http://127.0.0.1:PORT``, what
``shared_core.connect_model`` takes); the OpenAI-compatible routes are under ``BASE/v1``.

- The server runs from ``./.venv-vllm`` (``bash scripts/setup.sh --vllm``) and serves the embedded
  SmolLM2 model as ``smollm2`` on a free port of 127.0.0.1, logging to ``<pytest tmp>/vllm/server.log``.
- Without ``.venv-vllm`` the tests are skipped, unless ``DEAL_REQUIRE_VLLM=1`` (CI sets it), where a
  missing venv fails them: CI never passes by skipping the real server.
- ``DEAL_VLLM_URL=http://127.0.0.1:PORT`` reuses a server already running (started e.g. with
  ``.venv/bin/python scripts/vllm_server.py``) instead of starting one; start-up takes minutes.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE.parent.parent / "scripts" / "vllm_server.py"


def _launcher() -> ModuleType:
    """``scripts/vllm_server.py``, shared with the benchmarks (a script, not part of the package)."""
    name = "deal_vllm_server"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, LAUNCHER)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test collected from this folder ``vllm``."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.vllm)


def _required() -> bool:
    return os.environ.get("DEAL_REQUIRE_VLLM", "").lower() in {"1", "true", "yes"}


@pytest.fixture(scope="session")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (no ``/v1``) of a vLLM server serving the embedded SmolLM2 model as ``smollm2``."""
    running = os.environ.get("DEAL_VLLM_URL")
    if running:
        yield running.rstrip("/").removesuffix("/v1")
        return
    launcher = _launcher()
    python = launcher.vllm_python()
    if not python.exists():
        reason = f"{python} is missing: `bash scripts/setup.sh --vllm` creates it"
        if _required():
            pytest.fail(f"DEAL_REQUIRE_VLLM is set but {reason}")
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        with launcher.vllm_server(log_path=log) as url:
            yield url
    except launcher.VLLMServerError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def vllm_v1(vllm_server: str) -> str:
    """The OpenAI-compatible API root: ``BASE/v1``."""
    return vllm_server + "/v1"
