"""Liveness and readiness: ``/healthz`` says the process answers, ``/readyz`` that Redis does too."""

from __future__ import annotations

import redis
from flask import Blueprint, Response, jsonify

from app.services import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    return jsonify(status="ok"), 200


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    try:
        services().stores.redis.ping()
    except redis.RedisError as error:
        return jsonify(status="unavailable", redis=type(error).__name__), 503
    return jsonify(status="ok", redis="ok"), 200
