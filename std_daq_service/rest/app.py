"""The REST proxy's Flask app: HTTP requests become broker requests; answers are JSON with honest codes."""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pika.exceptions
import redis
from flask import Flask, Response, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from std_daq_service import __version__
from std_daq_service.broker import Caller, CallResult, SharedCaller, parse_time, read_history
from std_daq_service.config import ConfigStore, RestConfig, live_services, service_kind
from std_daq_service.protocol import (
    DaqError,
    InitHpIoRequest,
    InitSimRequest,
    InvalidRequest,
    KillRequest,
    NoServiceAnswered,
    Request,
    Status,
    StopHpIoRequest,
    UnknownTarget,
    WriteRequest,
    describe_validation_error,
)
from std_daq_service.rest import json_body
from std_daq_service.rest.openapi import ANY_OBJECT, TARGET_FIELDS, Route, openapi_document

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
CALLER_USER_HEADER = "X-Caller-User"
"""HTTP header naming the person behind a request, for the audit trail (the host is the client's address)."""
HISTORY_LIMIT = 1000


def _json(payload: dict[str, Any], code: int = 200) -> Response:
    return Response(json_body.dumps(payload), status=code, mimetype="application/json")


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


def _model(model: type[BaseModel], body: dict[str, Any]) -> BaseModel:
    fields = {k: v for k, v in body.items() if k not in TARGET_FIELDS and k != "request_type"}
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequest(f"invalid request: {describe_validation_error(exc)}") from exc


def _http_caller() -> Caller:
    """Who sent the HTTP request: its client address and the `X-Caller-User` header, as given."""
    return Caller(request.remote_addr or "", request.headers.get(CALLER_USER_HEADER, ""))


def _std_daq_response(started: float | None) -> Callable[[Status], dict[str, Any]]:
    """std_daq's answer to a write: the writer's result (its frame times are `first_timestamp_ns` /
    `last_timestamp_ns`) with `output_file` and the request's start and end in Unix seconds (the end is now)."""
    ended = time.time()

    def shape(status: Status) -> dict[str, Any]:
        output_file = (status.request or {}).get("output_file")
        return {"output_file": output_file, **(status.result or {}), "init_timestamp": started,
                "end_timestamp": ended}

    return shape


class RestApi:
    """The proxy's endpoints; each view answers one route of `ROUTES`."""

    def __init__(self, service_name: str, config: RestConfig, caller: SharedCaller, redis_client: redis.Redis):
        self.service_name = service_name
        self.config = config
        self.caller = caller
        self.redis = redis_client
        self.store = ConfigStore(redis_client)

    def targets_of(self, body: dict[str, Any], key: str) -> list[str]:
        """The services named by `body[key]`; by default the configured writers or agents, else every live one."""
        field = TARGET_FIELDS[key]
        kind = field.kind
        named = body.get(key)
        if named is None:
            found = getattr(self.config, field.config_attribute) or sorted(live_services(self.redis, kind))
            if not found:
                raise NoServiceAnswered(f"no live {kind} service to send the request to")
            return found
        names = [named] if isinstance(named, str) else named
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise InvalidRequest(f"{key}: a service name or a list")
        wrong = [n for n in names if service_kind(n) != kind]
        if wrong:
            raise InvalidRequest(f"not {kind} services: {', '.join(wrong)}")
        return names

    def call(self, targets: list[str], req: Request) -> CallResult:
        request_id = str(uuid.uuid4())
        self.caller.publish(targets, req, request_id, _http_caller())  # its waiter exists before it leaves
        return self.caller.wait(request_id, targets, self.config.sync_timeout_seconds)

    @staticmethod
    def answer(result: CallResult, shape: Callable[[Status], dict[str, Any]] = lambda s: s.result or {},
               single: bool = False, any_final: bool = False) -> Response:
        """200 if every target succeeded; else the code of the call's error (`CallResult.error`).

        `single`: one target answers also as std_daq's `response`. `any_final`: every final status is an answer
        (a kill's: killed, or ended before); only a missing one is an error.
        """
        responses = {t: {"status": s.action, "message": s.message, **shape(s)} for t, s in result.finals.items()}
        error = None if any_final and result.complete else result.error()
        if error is not None:
            return _error(str(error), error.http_status, request_id=result.request_id, responses=responses)
        payload = {"status": "ok", "request_id": result.request_id, "responses": responses}
        if single and len(responses) == 1:
            payload["response"] = next(iter(responses.values()))
        return _json(payload)

    def write_sync(self, req: WriteRequest, writers: list[str]) -> Response:
        started = time.time()
        result = self.call(writers, req)
        return self.answer(result, _std_daq_response(started), single=True)

    def write_async(self, req: WriteRequest, writers: list[str]) -> Response:
        request_id = str(uuid.uuid4())
        self.caller.publish(writers, req, request_id, _http_caller())
        return _json({"status": "ok", "request_id": request_id, "writers": writers})

    def write_kill(self, req: KillRequest, writers: list[str]) -> Response:
        """Kill a write and answer, as std_daq, with its final status (whatever it is: killed, or already ended).

        Waits for the writers that reported the request (all `writers` for one this proxy sent and nobody
        reported yet) up to `sync_timeout_seconds`: 504 if a final status does not come.
        """
        history = self.caller.history(req.request_id)
        for writer in writers:
            self.caller.kill(writer, req.request_id, _http_caller())
        if history is None:
            raise UnknownTarget(f"kill sent to {', '.join(writers)}, but this proxy saw no status of request "
                                f"{req.request_id} (it keeps the last 2000), so it cannot wait for its end")
        running = sorted({s.source for s in history} & set(writers)) or writers
        result = self.caller.wait(req.request_id, running, self.config.sync_timeout_seconds)
        started = min((s.timestamp for s in result.history), default=None)
        return self.answer(result, _std_daq_response(started), single=True, any_final=True)

    def agent_call(self, req: Request, agents: list[str]) -> Response:
        return self.answer(self.call(agents, req))

    def services(self) -> Response:
        return _json({"status": "ok", "services": live_services(self.redis)})

    def request_history(self, request_id: str) -> Response:
        """Every status of a request: as this proxy saw them, else from the audit trail (older ones, or sent
        before this proxy started)."""
        history = self.caller.history(request_id)
        if history is not None:
            return _json({"status": "ok", "request_id": request_id,
                          "statuses": [s.model_dump(mode="json") for s in history]})
        records = read_history(self.redis, request_id=request_id, limit=HISTORY_LIMIT)
        if not records:
            raise UnknownTarget(f"no request {request_id} seen by this proxy or in the audit trail")
        statuses = sorted(({"request_id": request_id, "source": record["service"], "request": record["request"],
                            "result": None, **step} for record in records for step in record["statuses"]
                           if step["action"] != "kill"),
                          key=lambda s: s["timestamp"])
        return _json({"status": "ok", "request_id": request_id, "statuses": statuses})

    def request_list(self) -> Response:
        """The audit trail's requests, newest first, filtered by `service`, `type`, `since`, `until`, `limit`."""
        args = request.args
        try:
            limit = int(args.get("limit", 100))
        except ValueError:
            raise InvalidRequest(f"limit: {args['limit']!r} is not an integer") from None
        if not 1 <= limit <= HISTORY_LIMIT:
            raise InvalidRequest(f"limit: between 1 and {HISTORY_LIMIT}")
        records = read_history(self.redis, args.get("service") or None, args.get("type") or None,
                               parse_time(args.get("since"), "since"), parse_time(args.get("until"), "until"), limit)
        return _json({"status": "ok", "requests": records})

    def recent(self) -> Response:
        rows = []
        for request_id, history in self.caller.recent(50):
            latest = {s.source: s.action for s in history}
            first = history[0] if history else None
            rows.append({"request_id": request_id, "request_type": (first.request or {}).get("request_type")
                         if first else None, "services": latest})
        return _json({"status": "ok", "requests": rows})

    def get_config(self, service: str) -> Response:
        return _json({"status": "ok", "service": service,
                      "config": self.store.load(service).model_dump(mode="json")})

    def put_config(self, body: dict[str, Any], service: str) -> Response:
        saved = self.store.save(service, body)
        return _json({"status": "ok", "service": service, "config": saved.model_dump(mode="json")})

    def health(self) -> Response:
        redis_ok = True
        try:
            self.redis.ping()
        except redis.RedisError:
            redis_ok = False
        ok = redis_ok and self.caller.connected.is_set()
        return _json({"status": "ok" if ok else "error", "service": self.service_name, "version": __version__,
                      "broker_connected": self.caller.connected.is_set(), "redis_connected": redis_ok,
                      "time": time.time()}, 200 if ok else 503)

    def openapi(self) -> Response:
        return _json(openapi_document(ROUTES))


ROUTES: tuple[Route, ...] = (
    Route("POST", "/write_sync", "Record a file and wait for the writer's final status.", RestApi.write_sync,
          WriteRequest, "writer"),
    Route("POST", "/write_async", "Start recording a file; answers its request_id at once.", RestApi.write_async,
          WriteRequest, "writer"),
    Route("POST", "/write_kill", "Stop a write; the file keeps what was written.", RestApi.write_kill,
          KillRequest, "writer"),
    Route("POST", "/init_hp_io", "Agents start tracking a data dir.", RestApi.agent_call, InitHpIoRequest,
          "targets"),
    Route("POST", "/init_sim", "Agents replay an archived run as a live one.", RestApi.agent_call, InitSimRequest,
          "targets"),
    Route("POST", "/stop_hp_io", "Agents stop tracking.", RestApi.agent_call, StopHpIoRequest, "targets"),
    Route("GET", "/services", "Live services (from their liveness beacons).", RestApi.services),
    Route("GET", "/requests", "Requests the services received (audit trail), newest first; times are Unix seconds "
          "or ISO 8601.", RestApi.request_list, query=("service", "type", "since", "until", "limit")),
    Route("GET", "/requests/<request_id>", "Status history of a request.", RestApi.request_history),
    Route("GET", "/status", "The 50 most recent requests and each service's latest status.", RestApi.recent),
    Route("GET", "/config/<service>", "The stored configuration of a service.", RestApi.get_config),
    Route("PUT", "/config/<service>", "Validate and store a service's configuration.", RestApi.put_config,
          ANY_OBJECT),
    Route("GET", "/health", "Broker and Redis reachable (200) or not (503).", RestApi.health),
    Route("GET", "/openapi.json", "This document.", RestApi.openapi),
)
"""Every endpoint of the proxy; Flask's URL map and the OpenAPI document are both built from it."""


def _view(api: RestApi, route: Route) -> Callable[..., Response]:
    """The Flask view of a route: parse and validate the body, resolve the targets, call the route's view."""

    def view(**path: str) -> Response:
        if route.body is None:
            return route.view(api, **path)
        body = _body()
        if route.body is ANY_OBJECT:
            return route.view(api, body, **path)
        return route.view(api, _model(route.body, body), api.targets_of(body, route.targets))

    return view


def token_matches(authorization: str, token: str) -> bool:
    """Whether an `Authorization` header carries `Bearer <token>`, compared in constant time."""
    return hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


def create_app(service_name: str, config: RestConfig, caller: SharedCaller, redis_client: redis.Redis) -> Flask:
    """The Flask app of one REST proxy."""
    app = Flask("std_daq_rest")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    api = RestApi(service_name, config, caller, redis_client)
    for route in ROUTES:
        app.add_url_rule(route.path, route.operation_id, _view(api, route), methods=[route.method])

    @app.before_request
    def _check_token():
        if config.token and request.method not in ("GET", "HEAD", "OPTIONS") and not token_matches(
                request.headers.get("Authorization", ""), config.token):
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

    return app
