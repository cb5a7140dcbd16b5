"""The REST proxy's route table entry and the OpenAPI 3.1 document built from the table and the models."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydantic import BaseModel

from std_daq_service import __version__


class TargetField(NamedTuple):
    """A body field naming the services a request goes to, besides the request's own fields.

    `config_attribute` is the `RestConfig` list used when the body names none (empty: every live service).
    """

    kind: str
    config_attribute: str
    description: str


TARGET_FIELDS = {
    "targets": TargetField("hp_io_agent", "agents", "Agent SERVICE_NAME or list; default: the agents of the REST "
                                                    "config, else every live agent."),
    "writer": TargetField("writer", "writers", "Writer SERVICE_NAME or list; default: the writers of the REST "
                                               "config, else every live writer."),
}

ANY_OBJECT = dict
"""`Route.body` of a route that takes any JSON object (validated by the route itself)."""

_NAMES = {"type": "array", "items": {"type": "string"}}
_ERROR = {"type": "object", "required": ["status", "message"],
          "properties": {"status": {"const": "error"}, "message": {"type": "string"},
                         "request_id": {"type": "string"}}}
_CODES = {"400": "Bad input (the message names the field)", "401": "Token missing or wrong",
          "404": "Unknown service or request", "409": "Conflict with work in progress, or killed",
          "413": "Body over 1 MiB", "502": "No service answered, or the broker is down",
          "504": "A sync call timed out; the request keeps running", "507": "Output could not be written"}


@dataclass(frozen=True)
class Route:
    """One endpoint of the proxy: what Flask serves and what the OpenAPI document describes.

    Args:
        path: a Flask rule (`/requests/<request_id>`).
        view: the function answering it.
        body: the request model of the JSON body, `ANY_OBJECT`, or None for no body.
        targets: the body field naming the target services (a key of `TARGET_FIELDS`).
        query: the optional query parameters (strings).
    """

    method: str
    path: str
    summary: str
    view: Callable[..., Any]
    body: type[BaseModel] | type[dict] | None = None
    targets: str | None = None
    query: tuple[str, ...] = ()

    @property
    def path_parameters(self) -> list[str]:
        return re.findall(r"<(\w+)>", self.path)

    @property
    def openapi_path(self) -> str:
        return re.sub(r"<(\w+)>", r"{\1}", self.path)

    @property
    def operation_id(self) -> str:
        """`get_requests_request_id`: the method and the path's words."""
        return re.sub(r"\W+", "_", f"{self.method.lower()} {self.path.strip('/')}").strip("_")

    def body_schema(self) -> dict[str, Any]:
        if self.body is ANY_OBJECT:
            return {"type": "object", "properties": {}}
        schema = self.body.model_json_schema()
        schema.get("properties", {}).pop("request_type", None)
        if self.targets is not None:
            schema.setdefault("properties", {})[self.targets] = {"description": TARGET_FIELDS[self.targets].description,
                                                                  "anyOf": [{"type": "string"}, _NAMES]}
        schema["additionalProperties"] = False
        return schema


def openapi_document(routes: Iterable[Route]) -> dict[str, Any]:
    """Every route with its summary, body schema and answers."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.operation_id,
            "responses": {"200": {"description": "OK: {\"status\": \"ok\", ...}",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          **{code: {"description": text, "content": {"application/json": {"schema": _ERROR}}}
                             for code, text in _CODES.items()}},
        }
        if route.path_parameters:
            operation["parameters"] = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                                       for name in route.path_parameters]
        if route.query:
            operation["parameters"] = [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                                       for name in route.query]
        if route.body is not None:
            operation["requestBody"] = {"required": False,
                                        "content": {"application/json": {"schema": route.body_schema()}}}
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = operation
    return {"openapi": "3.1.0",
            "info": {"title": "PANOSETI std_daq REST proxy", "version": __version__},
            "paths": dict(sorted(paths.items()))}
