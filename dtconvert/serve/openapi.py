"""The OpenAPI document: every endpoint, body, media type and status the server answers with."""

from __future__ import annotations

from typing import Any

from fastapi.openapi.utils import get_openapi

from dtconvert.serve.options import DEFAULT_TOP_K, MAX_TOP_K
from dtconvert.wire import CONTENT_TYPE

_ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
_SCHEMAS = {
    "Error": {
        "type": "object",
        "required": ["error", "status"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "description": "one sentence naming the field and the problem"},
            "status": {"type": "integer"},
        },
    },
    "Prediction": {
        "type": "object",
        "required": ["label", "index", "score"],
        "properties": {
            "label": {"type": "string"},
            "index": {"type": "integer", "minimum": 0},
            "score": {"type": "number", "minimum": 0, "maximum": 1},
        },
    },
    "Decoded": {
        "type": "object",
        "required": ["model_id", "tasks", "predictions", "timing"],
        "properties": {
            "model_id": {"type": "string"},
            "tasks": {"type": "array", "items": {"type": "string"}},
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                },
            },
            "timing": {"type": "object", "additionalProperties": {"type": "number"}},
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "model_id", "model_ids"],
        "properties": {
            "status": {"const": "ok"},
            "model_id": {"type": "string"},
            "model_ids": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Models": {
        "type": "object",
        "required": ["models"],
        "properties": {
            "models": {
                "type": "array",
                "items": {"type": "object", "required": ["id", "name", "tasks", "wire_shape", "scale", "zero_point"]},
            }
        },
    },
    "Model": {"type": "object", "required": ["schema_version", "model", "precision", "device_input", "wire", "tasks", "wire_format"]},
}
SECURED_PATHS = ("/v1/decode", "/v1/model", "/v1/models")


def _error(description: str, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    if headers:
        response["headers"] = headers
    return response


def _json(schema: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def openapi_document(app, secured: bool, gateway: bool = False) -> dict:
    """FastAPI's document for ``app``'s routes, with the wire-format body and every answer spelled
    out; ``secured``: the server has a bearer token, so /v1/* may answer 401."""
    document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = document.setdefault("components", {})
    components.setdefault("schemas", {}).update(_SCHEMAS)
    if secured:
        components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    paths = document["paths"]
    unauthorized = {"401": _error("missing or wrong bearer token", _WWW_AUTHENTICATE)} if secured else {}
    paths["/v1/decode"]["post"].update(_decode_operation(unauthorized, gateway))
    paths["/v1/model"]["get"].update(_model_operation(unauthorized))
    paths["/v1/models"]["get"]["responses"] = {"200": _json("Models", "every served device variant"), **unauthorized}
    paths["/healthz"]["get"]["responses"] = {"200": _json("Health", "the decoder is loaded")}
    paths["/metrics"]["get"]["responses"] = {
        "200": {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
    }
    if secured:
        for path in SECURED_PATHS:
            for operation in paths[path].values():
                operation["security"] = [{"bearer": []}]
    for operations in paths.values():
        for operation in operations.values():
            operation["responses"].setdefault(
                "405", _error("method not allowed here (see the Allow header)", {"Allow": {"schema": {"type": "string"}}})
            )
    return document


def _decode_operation(unauthorized: dict, gateway: bool) -> dict:
    if gateway:  # dtconvert serve --triton
        overloaded = {
            "502": _error("Triton refused the forwarded request (the gateway and its Triton repository disagree)"),
            "503": _error("at capacity, shutting down, or Triton unavailable; retry after Retry-After seconds", _RETRY_AFTER),
        }
    else:
        overloaded = {"503": _error("at capacity or shutting down; retry after Retry-After seconds", _RETRY_AFTER)}
    return {
        "parameters": [
            {
                "name": "top_k",
                "in": "query",
                "required": False,
                "description": "labels per task (capped at its classes)",
                "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K},
            }
        ],
        "requestBody": {
            "required": True,
            "description": "one wire-format message (docs/wire-format.md)",
            "content": {CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        "responses": {
            "200": _json("Decoded", "top-k labels per image and task"),
            "400": _error("not a valid wire message, or a bad top_k"),
            **unauthorized,
            "408": _error("the body did not arrive in time"),
            "413": _error("body larger than the limit"),
            "415": _error(f"Content-Type is not {CONTENT_TYPE}"),
            "422": _error("a valid message that fits no served model: model id, shape, scale, zero point or task"),
            **overloaded,
        },
    }


def _model_operation(unauthorized: dict) -> dict:
    return {
        "parameters": [
            {
                "name": "id",
                "in": "query",
                "required": False,
                "description": "a served model id (required with several)",
                "schema": {"type": "string"},
            }
        ],
        "responses": {
            "200": _json("Model", "the public part of the variant's manifest"),
            **unauthorized,
            "404": _error("no such model id here"),
            "409": _error("several models served: name one with id"),
        },
    }
