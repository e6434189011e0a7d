"""promoter-relay HTTP side: Segment ingest, health checks, metrics and the inspection UI/API."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from worker import logs
from worker.settings import load, load_for_service

# Browsers ask every site for /favicon.ico; an SVG answers it (a 404 in every dashboard load otherwise).
FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#175cd3"/>'
    b'<path d="M3 11l3-4 3 2 4-5" stroke="#fff" stroke-width="1.8" fill="none"/></svg>'
)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app from the environment; ``test_config`` overrides settings by field name
    (``redis_url=...``) and, with ``TESTING``, skips log setup and the production checks."""
    from app import admin, health, ingest, metrics
    from app.services import connect

    app = Flask(__name__)
    overrides = dict(test_config or {})
    testing = bool(overrides.pop("TESTING", False))
    app.config.update(TESTING=testing, MAX_CONTENT_LENGTH=None, JSON_SORT_KEYS=False)
    settings = (load if testing else load_for_service)(os.environ, **overrides)
    if not testing:
        logs.configure(settings.log_format, settings.log_level)
    app.extensions["services"] = connect(settings)
    if settings.segment_signature_only_batches_unsafe:
        app.logger.warning(
            "SEGMENT_SIGNATURE_ONLY_BATCHES_UNSAFE is on: webhook arrays are accepted on a signature that "
            "covers only their first element, so anyone holding one signed event can forge the rest"
        )

    app.register_blueprint(health.bp)
    app.register_blueprint(ingest.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(metrics.bp)

    @app.get("/favicon.ico")
    def _favicon() -> Response:
        return Response(FAVICON, mimetype="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> tuple[Response, int]:
        response, code = ingest.failure(error.code or 500, {"_request": [error.description or error.name]})
        if error.code == 405 and isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response, code

    @app.errorhandler(Exception)
    def _unexpected(_: Exception) -> tuple[Response, int]:
        app.logger.exception("unhandled error")
        return jsonify(success=False, errors={"_service": ["Internal error; retry later."]}), 500

    return app
