"""Starts the embedded SmolLM2 model behind a real vLLM server on 127.0.0.1, for tests and benchmarks.

The server runs from ``./.venv-vllm`` (made by ``bash scripts/setup.sh --vllm``: vLLM pins an older
transformers than deal, so it lives in its own venv) on a free port, serves the embedded model's
safetensors folder under the name ``smollm2``, logs to a file, and is stopped with its whole process
group (vLLM runs its engine in child processes) when the context manager exits.

The base URL it yields has no ``/v1`` suffix (``http://127.0.0.1:PORT``): the form
``shared_core.connect_model`` takes; the OpenAI-compatible routes are under ``BASE/v1``.

Used by ``tests/vllm/conftest.py`` and ``benchmarks/bench_backends.py``; also runnable by hand:
``.venv/bin/python scripts/vllm_server.py`` prints the URL and serves until interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DEFAULT_START_TIMEOUT",
    "SERVED_NAME",
    "VLLM_VENV",
    "VLLMServerError",
    "free_port",
    "vllm_python",
    "vllm_server",
]

ROOT = Path(__file__).resolve().parent.parent
VLLM_VENV = ROOT / ".venv-vllm"
SERVED_NAME = "smollm2"
#: Seconds to wait for ``/health``: start-up takes about 160 s on 2 busy cores (model load, CPU warm-up).
DEFAULT_START_TIMEOUT = 420.0


class VLLMServerError(RuntimeError):
    """The vLLM server could not be started (missing venv, early exit, or no ``/health`` in time)."""


def vllm_python() -> Path:
    """The interpreter of the vLLM venv (``$DEAL_VLLM_PYTHON`` overrides ``./.venv-vllm/bin/python``)."""
    override = os.environ.get("DEAL_VLLM_PYTHON")
    return Path(override) if override else VLLM_VENV / "bin" / "python"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM to the server's process group, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # engine children may outlive the API process
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the starting process dies (Linux), so no server is orphaned."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def model_folder() -> str:
    """The embedded SmolLM2 model as a safetensors folder (converted from its GGUF once, then cached)."""
    from shared_core.models import resolve_model_source

    return resolve_model_source(SERVED_NAME)


@contextlib.contextmanager
def vllm_server(
    model_dir: str | None = None,
    *,
    port: int | None = None,
    log_path: str | Path | None = None,
    start_timeout: float = DEFAULT_START_TIMEOUT,
    max_model_len: int = 2048,
    kv_cache_gb: int = 2,
) -> Iterator[str]:
    """Runs a vLLM OpenAI-compatible server for the block; yields its base URL (no ``/v1``).

    Raises :class:`VLLMServerError` when the venv is missing, the server exits during start-up or
    ``/health`` does not answer within ``start_timeout`` seconds (the message ends with the log's tail).
    """
    python = vllm_python()
    if not python.exists():
        raise VLLMServerError(f"{python} does not exist: run `bash scripts/setup.sh --vllm` first")
    folder = model_dir or model_folder()
    port = port or free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="deal-vllm-")) / "vllm-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", folder, "--served-model-name", SERVED_NAME,
        "--dtype", "float32", "--max-model-len", str(max_model_len),
        "--host", "127.0.0.1", "--port", str(port),
    ]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb), "HF_HUB_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    env.pop("VIRTUAL_ENV", None)
    env.pop("OMP_NUM_THREADS", None)  # the callers' one-thread setting (tests) is not the server's: vLLM binds its own
    with open(log, "ab") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=tempfile.gettempdir(), start_new_session=True,
                                   preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    try:
        deadline = time.monotonic() + start_timeout
        while not _healthy(base_url):
            if process.poll() is not None:
                raise VLLMServerError(
                    f"vLLM exited with code {process.returncode} during start-up; log {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise VLLMServerError(f"vLLM gave no /health within {start_timeout:.0f} s; log {log}:\n{_tail(log)}")
            time.sleep(2.0)
        yield base_url
    finally:
        _stop(process)


def main() -> int:
    """Serves until interrupted, printing the base URL and the log's path."""
    log = Path(tempfile.mkdtemp(prefix="deal-vllm-")) / "vllm-server.log"
    started = time.monotonic()
    print(f"starting vLLM (log {log}) ...", flush=True)
    try:
        with vllm_server(log_path=log) as url:
            print(f"{url} ready after {time.monotonic() - started:.0f} s (Ctrl-C stops it)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
    except VLLMServerError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
