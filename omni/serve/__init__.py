"""HTTP API and the web page: `omni serve`, `create_app(checkpoint)`."""

from .app import ServeSettings, create_app, load_model

__all__ = ["ServeSettings", "create_app", "load_model"]
