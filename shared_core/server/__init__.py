"""``deal serve``: an OpenAI-compatible HTTP server over deal's reward-guided decoding.

:func:`create_app` builds the FastAPI app from :class:`ServerSettings`; :func:`serve` runs it with
uvicorn. See docs/server.md for the endpoints, the ``deal`` request field and the security rules.
"""

from __future__ import annotations

from typing import Any

from shared_core.server.app import create_app, load_served_model
from shared_core.server.settings import Limits, ServerSettings, load_policies_file

__all__ = ["Limits", "ServerSettings", "create_app", "load_policies_file", "load_served_model", "serve"]


def serve(settings: ServerSettings, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          model: Any = None) -> None:
    """Loads the model and serves until interrupted."""
    import uvicorn

    app = create_app(settings, model)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
