"""The OpenAPI document, generated from the RPC registry and the plain HTTP routes."""

from __future__ import annotations

from typing import Any

import msgspec

from .. import __version__
from .rpc import Service

ERROR_SCHEMA = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "description": "Connect error code, e.g. invalid_argument"},
        "message": {"type": "string"},
    },
}

_ERRORS = {
    "400": "invalid_argument / failed_precondition", "401": "unauthenticated", "403": "permission_denied",
    "404": "not_found / unimplemented", "409": "already_exists", "413": "resource_exhausted (body too large)",
    "415": "unsupported content type", "429": "resource_exhausted (rate limited)", "500": "internal",
}


# How each auth policy is met, as an OpenAPI security requirement (the schemes are in build()).
_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "public": [],
    "ddi": [{"ddiTargetToken": []}, {"ddiGatewayToken": []}],
}
_CREDENTIALS: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]


def auth(policy: str) -> dict[str, Any]:
    """What a plain HTTP route's operation declares about its auth policy (RPC methods get it from build())."""
    return {"security": _SECURITY.get(policy, _CREDENTIALS), "x-fleetd-auth": policy}


def build(services: list[Service], extra_paths: dict[str, Any] | None = None) -> dict[str, Any]:
    methods = [m for s in services for m in s.methods.values()]
    types = sorted({t for m in methods for t in (m.request_type, m.response_type)}, key=lambda t: t.__name__)
    refs, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    components["ConnectError"] = ERROR_SCHEMA
    by_type = dict(zip(types, refs, strict=True))
    error_responses = {
        code: {"description": desc, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ConnectError"}}}}
        for code, desc in _ERRORS.items()
    }
    paths: dict[str, Any] = {}
    for m in methods:
        op = {
            "operationId": f"{m.service}.{m.name}",
            "tags": [m.service],
            "summary": m.doc.split("\n", 1)[0] if m.doc else m.name,
            "description": m.doc + f"\n\nAuth: {m.auth}.",
            "requestBody": {"required": True, "content": {"application/json": {"schema": by_type[m.request_type]}}},
            "responses": {"200": {"description": "OK", "content": {"application/json": {
                "schema": by_type[m.response_type]}}}, **error_responses},
            **auth(m.auth),
        }
        paths[m.path] = {"post": op}
    paths.update(extra_paths or {})
    return {
        "openapi": "3.1.0",
        "info": {"title": "fleetd", "version": __version__,
                 "description": "Connect-protocol RPC (POST JSON) plus plain HTTP for blobs. "
                                "See docs/protocol.md."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API key (fk_...) or a device token, per the route's policy"},
                "session": {"type": "apiKey", "in": "cookie", "name": "fleetd_session",
                            "description": "a browser session from UserService/Login; writes also need the "
                                           "X-CSRF-Token header"},
                "ddiTargetToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                                   "description": "hawkBit DDI: Authorization: TargetToken <token>"},
                "ddiGatewayToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                                    "description": "hawkBit DDI: Authorization: GatewayToken <token>"},
            },
        },
        "security": _CREDENTIALS,
        "tags": [{"name": s.name, "description": s.doc} for s in services],
    }
