"""Every test in this folder gets the ``vllm`` marker (``-m "not vllm"`` leaves them out).

The real vLLM server they use is the session fixture ``vllm_server`` in ``tests/conftest.py`` (shared
with ``tests/server``'s ``deal serve --base-url`` test, so a session starts at most one).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every test collected from this folder ``vllm``."""
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.vllm)
