"""The REST proxy's Flask app: HTTP requests become broker requests; answers are JSON with honest codes."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pika.exceptions
import redis
from flask import Flask, Response, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from std_daq_service import __version__
from std_daq_service.broker import SharedCaller
from std_daq_service.config import ConfigStore, RestConfig, live_services, service_kind
from std_daq_service.protocol import (
    DaqError,
    InitHpIoRequest,
    InitSimRequest,
    InvalidRequest,
    NoServiceAnswered,
    RequestBase,
    StopHpIoRequest,
    UnknownTarget,
    WriteRequest,
    describe_validation_error,
)
from std_daq_service.rest.openapi import openapi_document

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
_TARGET_KEYS = ("targets", "writer")


def _json(payload: dict[str, Any], code: int = 200) -> Response:
    return Response(orjson.dumps(payload, default=str), status=code, mimetype="application/json")


def _error(message: str, code: int, **extra: Any) -> Response:
    return _json({"status": "error", "message": message, **extra}, code)


def _body() -> dict[str, Any]:
    raw = request.get_data(cache=True)
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body


def _model(model: type[RequestBase], body: dict[str, Any]) -> RequestBase:
    fields = {k: v for k, v in body.items() if k not in _TARGET_KEYS and k != "request_type"}
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request: {describe_validation_error(exc)}") from exc


def create_app(service_name: str, config: RestConfig, caller: SharedCaller, redis_client: redis.Redis) -> Flask:
    """The Flask app of one REST proxy."""
    app = Flask("std_daq_rest")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    store = ConfigStore(redis_client)

    def authorised() -> bool:
        if not config.token or request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        return request.headers.get("Authorization", "") == f"Bearer {config.token}"

    @app.before_request
    def _check_token():
        if not authorised():
            return _error("this endpoint needs 'Authorization: Bearer <token>' (the token of the REST config)", 401)
        return None

    @app.errorhandler(DaqError)
    def _daq_error(exc: DaqError):
        return _error(str(exc), exc.http_status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.code == 413:
            return _error(f"request body too large: the limit is {MAX_BODY_BYTES} bytes", 413)
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(pika.exceptions.AMQPError)
    def _broker_down(exc: pika.exceptions.AMQPError):
        return _error(f"the message broker is not reachable: {exc!r}", 502)

    @app.errorhandler(redis.RedisError)
    def _redis_down(exc: redis.RedisError):
        return _error(f"Redis is not reachable: {exc}", 502)

    def targets_of(body: dict[str, Any], kind: str, default: list[str]) -> list[str]:
        named = body.get("targets") if kind == "hp_io_agent" else body.get("writer")
        if named is None:
            found = default or sorted(live_services(redis_client, kind))
            if not found:
                raise NoServiceAnswered(f"no live {kind} service to send the request to")
            return found
        names = [named] if isinstance(named, str) else named
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise InvalidRequest(f"{'targets' if kind == 'hp_io_agent' else 'writer'}: a service name or a list")
        wrong = [n for n in names if service_kind(n) != kind]
        if wrong:
            raise InvalidRequest(f"not {kind} services: {', '.join(wrong)}")
        return names

    def call(targets: list[str], req: RequestBase, timeout: float | None = None) -> tuple[str, Any]:
        request_id = str(uuid.uuid4())
        caller.publish(targets, req, request_id)  # its waiter exists before the request leaves
        return request_id, caller.wait(request_id, targets, timeout or config.sync_timeout_seconds)

    def answer(request_id: str, result, shape: Callable[[Any], dict[str, Any]] = lambda s: s.result or {},
               single: bool = False):
        """200 if every target succeeded; else the first failure's code; 504 if one did not finish.

        `single`: one target answers also as std_daq's `response`.
        """
        responses = {t: {"status": s.action, "message": s.message, **shape(s)} for t, s in result.finals.items()}
        error = result.error()
        if error is not None:
            return _error(str(error), error.http_status, request_id=request_id, responses=responses)
        payload = {"status": "ok", "request_id": request_id, "responses": responses}
        if single and len(responses) == 1:
            payload["response"] = next(iter(responses.values()))
        return _json(payload)

    def write_response(status) -> dict[str, Any]:
        result = status.result or {}
        return {**result, "init_timestamp": _seconds(result.get("first_timestamp_ns")),
                "end_timestamp": _seconds(result.get("last_timestamp_ns"))}

    @app.post("/write_sync")
    def write_sync():
        body = _body()
        req = _model(WriteRequest, body)
        writers = targets_of(body, "writer", config.writers)
        request_id, result = call(writers, req)
        return answer(request_id, result, write_response, single=True)

    @app.post("/write_async")
    def write_async():
        body = _body()
        req = _model(WriteRequest, body)
        writers = targets_of(body, "writer", config.writers)
        request_id = str(uuid.uuid4())
        caller.publish(writers, req, request_id)
        return _json({"status": "ok", "request_id": request_id, "writers": writers})

    @app.post("/write_kill")
    def write_kill():
        body = _body()
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequest("request_id: required (the id /write_async answered)")
        writers = targets_of(body, "writer", config.writers)
        for writer in writers:
            caller.kill(writer, request_id)
        return _json({"status": "ok", "request_id": request_id, "message": f"kill sent to {', '.join(writers)}"})

    def agent_endpoint(model: type[RequestBase]):
        def handle():
            body = _body()
            req = _model(model, body)
            agents = targets_of(body, "hp_io_agent", [])
            request_id, result = call(agents, req)
            return answer(request_id, result)
        return handle

    for path, model in (("/init_hp_io", InitHpIoRequest), ("/init_sim", InitSimRequest),
                        ("/stop_hp_io", StopHpIoRequest)):
        app.add_url_rule(path, path.strip("/"), agent_endpoint(model), methods=["POST"])

    @app.get("/services")
    def services():
        return _json({"status": "ok", "services": live_services(redis_client)})

    @app.get("/requests/<request_id>")
    def request_history(request_id: str):
        history = caller.history(request_id)
        if history is None:
            raise UnknownTarget(f"no request {request_id} seen by this proxy (it keeps the last 2000)")
        return _json({"status": "ok", "request_id": request_id,
                      "statuses": [s.model_dump(mode="json") for s in history]})

    @app.get("/status")
    def recent():
        rows = []
        for request_id, history in caller.recent(50):
            latest: dict[str, str] = {}
            for s in history:
                latest[s.source] = s.action
            first = history[0] if history else None
            rows.append({"request_id": request_id, "request_type": (first.request or {}).get("request_type")
                         if first else None, "services": latest})
        return _json({"status": "ok", "requests": rows})

    @app.get("/config/<service>")
    def get_config(service: str):
        return _json({"status": "ok", "service": service, "config": store.load(service).model_dump(mode="json")})

    @app.put("/config/<service>")
    def put_config(service: str):
        saved = store.save(service, _body())
        return _json({"status": "ok", "service": service, "config": saved.model_dump(mode="json")})

    @app.get("/health")
    def health():
        redis_ok = True
        try:
            redis_client.ping()
        except redis.RedisError:
            redis_ok = False
        ok = redis_ok and caller.connected.is_set()
        return _json({"status": "ok" if ok else "error", "service": service_name, "version": __version__,
                      "broker_connected": caller.connected.is_set(), "redis_connected": redis_ok,
                      "time": time.time()}, 200 if ok else 503)

    @app.get("/openapi.json")
    def openapi():
        return _json(openapi_document(app))

    return app


def _seconds(ns: int | None) -> float | None:
    return None if ns is None else ns / 1e9
