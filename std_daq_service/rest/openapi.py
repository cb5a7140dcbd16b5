"""The OpenAPI 3.1 document of the REST proxy, built from the app's routes and the request models."""

from __future__ import annotations

from typing import Any

from flask import Flask

from std_daq_service import __version__
from std_daq_service.protocol import InitHpIoRequest, InitSimRequest, StopHpIoRequest, WriteRequest

_TARGETS = {"targets": {"description": "Agent SERVICE_NAME or list; default: every live agent.",
                        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}
_WRITER = {"writer": {"description": "Writer SERVICE_NAME or list; default: the writers of the REST config.",
                      "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}}

ENDPOINTS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/write_sync"): {"summary": "Record a file and wait for the writer's final status.",
                              "body": (WriteRequest, _WRITER)},
    ("POST", "/write_async"): {"summary": "Start recording a file; answers its request_id at once.",
                               "body": (WriteRequest, _WRITER)},
    ("POST", "/write_kill"): {"summary": "Stop a write; the file keeps what was written.",
                              "body": ({"request_id": {"type": "string"}}, _WRITER)},
    ("POST", "/init_hp_io"): {"summary": "Agents start tracking a data dir.", "body": (InitHpIoRequest, _TARGETS)},
    ("POST", "/init_sim"): {"summary": "Agents replay an archived run as a live one.",
                            "body": (InitSimRequest, _TARGETS)},
    ("POST", "/stop_hp_io"): {"summary": "Agents stop tracking.", "body": (StopHpIoRequest, _TARGETS)},
    ("GET", "/services"): {"summary": "Live services (from their liveness beacons)."},
    ("GET", "/requests/{request_id}"): {"summary": "Status history of a recent request."},
    ("GET", "/status"): {"summary": "The 50 most recent requests and each service's latest status."},
    ("GET", "/config/{service}"): {"summary": "The stored configuration of a service."},
    ("PUT", "/config/{service}"): {"summary": "Validate and store a service's configuration.",
                                   "body": ({}, {})},
    ("GET", "/health"): {"summary": "Broker and Redis reachable (200) or not (503)."},
    ("GET", "/openapi.json"): {"summary": "This document."},
}

_ERROR = {"type": "object", "required": ["status", "message"],
          "properties": {"status": {"const": "error"}, "message": {"type": "string"},
                         "request_id": {"type": "string"}}}
_CODES = {"400": "Bad input (the message names the field)", "401": "Token missing or wrong",
          "404": "Unknown service or request", "409": "Conflict with work in progress, or killed",
          "413": "Body over 1 MiB", "502": "No service answered, or the broker is down",
          "504": "A sync call timed out; the request keeps running", "507": "Output could not be written"}


def _body_schema(body: tuple) -> dict[str, Any]:
    model, extra = body
    if isinstance(model, dict):
        schema = {"type": "object", "properties": dict(model)}
        if model:
            schema["required"] = list(model)
    else:
        schema = model.model_json_schema()
        schema.get("properties", {}).pop("request_type", None)
    schema.setdefault("properties", {}).update(extra)
    if not isinstance(body[0], dict) or body[0]:
        schema["additionalProperties"] = False
    return schema


def openapi_document(app: Flask) -> dict[str, Any]:
    """Every route of `app` with its summary, body schema and answers."""
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            info = ENDPOINTS.get((method, path), {"summary": ""})
            name = path.strip("/").replace("/", "_").replace("{", "").replace("}", "")
            operation: dict[str, Any] = {
                "summary": info["summary"],
                "operationId": f"{method.lower()}_{name}",
                "responses": {"200": {"description": "OK: {\"status\": \"ok\", ...}",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **{code: {"description": text, "content": {"application/json": {"schema": _ERROR}}}
                                 for code, text in _CODES.items()}},
            }
            parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                          for name in rule.arguments]
            if parameters:
                operation["parameters"] = parameters
            if "body" in info:
                operation["requestBody"] = {"required": False, "content": {
                    "application/json": {"schema": _body_schema(info["body"])}}}
            paths.setdefault(path, {})[method.lower()] = operation
    return {"openapi": "3.1.0",
            "info": {"title": "PANOSETI std_daq REST proxy", "version": __version__},
            "paths": dict(sorted(paths.items()))}
