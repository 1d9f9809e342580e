"""``headstart serve``: a trained model behind an HTTP API and an offline page (FastAPI + uvicorn).

``create_app(load_model("runs/photos"))`` is an ASGI app: ``POST /predict`` (multipart field ``files``), ``GET /info``,
``GET /healthz``, and ``GET /``, a page to drop images on. Needs the ``serve`` extra: ``pip install headstart[serve]``.
"""

from headstart.serve.app import create_app
from headstart.serve.model import load_model

__all__ = ["create_app", "load_model"]
