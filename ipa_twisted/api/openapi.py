"""The OpenAPI 3.1 document of the agent API, served at
``/v1/openapi.json``.

It describes the API as the agent serves it (contract section 1): the
routes with and without ``/v1``, the token in the query, the command body,
the command result, the fault body of every error, the 308 redirects to
the slashed forms.  The tests load it with a validator and fuzz a running
agent from it (schemathesis), so what it says is checked against what the
agent answers.
"""

from __future__ import annotations

from typing import Any

STATUSES = ["RUNNING", "SUCCEEDED", "FAILED", "CLEAN_VERSION_MISMATCH"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": schema}}}


def _fault(description: str) -> dict[str, Any]:
    return _json(_ref("Fault"), description)


_REDIRECT = {
    "description": "Permanent redirect to the slashed form (the query is "
                   "kept)",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": _ref("Fault")}},
}

_TOKEN = {"name": "agent_token", "in": "query", "required": False,
          "description": "The agent token (Ironic's lookup gives it out); "
                         "only the query counts, never the body.",
          "schema": {"type": "string"}}
_WAIT = {"name": "wait", "in": "query", "required": False,
         "description": "\"true\" (any case): answer once the command is "
                        "done; anything else: answer at once.",
         "schema": {"type": "string"}}

_COMMON_ERRORS = {
    "400": _fault("Malformed request (HTTP framing, path, Host)"),
}


def _operation(summary: str, responses: dict[str, Any], *,
               token: bool = False, wait: bool = False,
               body: dict[str, Any] | None = None,
               path_params: list[dict[str, Any]] | None = None,
               operation_id: str) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "operationId": operation_id,
                          "responses": {**_COMMON_ERRORS, **responses}}
    params = list(path_params or [])
    if token:
        params.append(_TOKEN)
        op["security"] = [{"agentToken": []}]
        op["responses"]["401"] = _fault("No token, or not the token in "
                                        "force (the body is not read)")
    if wait:
        params.append(_WAIT)
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _command_paths(prefix: str) -> dict[str, Any]:
    tag = prefix.strip("/").replace("/", "_") or "bare"
    command_id = {"name": "command_id", "in": "path", "required": True,
                  "schema": {"type": "string"}}
    return {
        f"{prefix}/commands/": {
            "get": _operation(
                "Every command run since the agent started, oldest first",
                {"200": _json(_ref("CommandList"), "The commands")},
                token=True, operation_id=f"list_commands_{tag}"),
            "post": _operation(
                "Run a command",
                {"200": _json(_ref("CommandResult"),
                              "Accepted: RUNNING (asynchronous command, "
                              "no wait) or finished"),
                 "400": _fault("Not a command body, unknown command, or "
                               "invalid parameters"),
                 "404": _fault("Unknown extension"),
                 "409": _fault("Another command is still running"),
                 "413": _fault("Body larger than 96 MiB")},
                token=True, wait=True, operation_id=f"run_command_{tag}",
                body={"required": True, "content": {
                    "application/json": {"schema": _ref("CommandRequest")}}}),
        },
        f"{prefix}/commands/{{command_id}}": {
            "get": _operation(
                "One command",
                {"200": _json(_ref("CommandResult"), "The command"),
                 "404": _fault("No command with this id")},
                token=True, wait=True, path_params=[command_id],
                operation_id=f"get_command_{tag}"),
        },
        f"{prefix}/commands": {
            "get": _operation("Redirect to the slashed form",
                              {"308": _REDIRECT},
                              operation_id=f"list_commands_redirect_{tag}"),
            "post": _operation("Redirect to the slashed form",
                               {"308": _REDIRECT},
                               operation_id=f"run_command_redirect_{tag}"),
        },
        f"{prefix}/status": {
            "get": _operation(
                "When the agent started, and its version",
                {"200": _json(_ref("Status"), "The status")},
                operation_id=f"status_{tag}"),
        },
    }


_LINK = {
    "type": "object",
    "required": ["href", "rel"],
    "properties": {"href": {"type": "string"}, "rel": {"type": "string"},
                   "type": {"type": "string"}},
}

_VERSION = {
    "type": "object",
    "required": ["id", "links"],
    "properties": {
        "id": {"const": "v1"},
        "links": {"type": "array", "items": _ref("Link")},
    },
}

_SCHEMAS: dict[str, Any] = {
    "Fault": {
        "type": "object",
        "required": ["faultcode", "faultstring"],
        "properties": {
            "faultcode": {"enum": ["Client", "Server"]},
            "faultstring": {"type": "string"},
        },
    },
    "Link": _LINK,
    "Version": _VERSION,
    "RootDocument": {
        "type": "object",
        "required": ["name", "description", "versions", "default_version"],
        "properties": {
            "name": {"type": "string"},
            "description": {"type": "string"},
            "versions": {"type": "array", "items": _ref("Version")},
            "default_version": _ref("Version"),
        },
    },
    "V1Document": {
        "type": "object",
        "required": ["id", "links", "commands", "status", "media_types"],
        "properties": {
            "id": {"const": "v1"},
            "links": {"type": "array", "items": _ref("Link")},
            "commands": {"type": "array", "items": _ref("Link")},
            "status": {"type": "array", "items": _ref("Link")},
            "media_types": {"type": "array", "items": {
                "type": "object", "required": ["base", "type"],
                "properties": {"base": {"type": "string"},
                               "type": {"type": "string"}}}},
        },
    },
    "Status": {
        "type": "object",
        "required": ["started_at", "version"],
        "properties": {"started_at": {"type": "number"},
                       "version": {"type": "string"}},
    },
    "CommandRequest": {
        "type": "object",
        "required": ["name", "params"],
        "properties": {
            "name": {"type": "string",
                     "pattern": "^[^.]+[.][^.]+$",
                     "description": "<extension>.<command>",
                     "examples": ["standby.get_partition_uuids"]},
            "params": {"type": "object",
                       "description": "The command's keyword arguments"},
        },
    },
    "CommandError": {
        "type": "object",
        "required": ["type", "code", "message", "details"],
        "properties": {
            "type": {"type": "string"},
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "details": {},
        },
    },
    "CommandResult": {
        "type": "object",
        "required": ["id", "command_name", "command_status", "command_error",
                     "command_result"],
        "properties": {
            "id": {"type": "string"},
            "command_name": {"type": "string"},
            "command_status": {"enum": STATUSES},
            "command_error": {"oneOf": [{"type": "null"},
                                        _ref("CommandError")]},
            "command_result": {
                "description": "null, an object or a list; while RUNNING "
                               "it may be {\"progress\": {...}}"},
        },
    },
    "CommandList": {
        "type": "object",
        "required": ["commands"],
        "properties": {"commands": {"type": "array",
                                    "items": _ref("CommandResult")}},
    },
}


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    paths: dict[str, Any] = {
        "/": {"get": _operation(
            "The API's root document",
            {"200": _json(_ref("RootDocument"), "Versions of the API")},
            operation_id="root")},
        "/v1/": {"get": _operation(
            "The v1 document",
            {"200": _json(_ref("V1Document"), "Links of v1")},
            operation_id="v1")},
        "/v1": {"get": _operation("Redirect to the slashed form",
                                  {"308": _REDIRECT},
                                  operation_id="v1_redirect")},
        "/v1/openapi.json": {"get": _operation(
            "This document",
            {"200": _json({"type": "object"}, "OpenAPI 3.1 document")},
            operation_id="openapi")},
    }
    paths.update(_command_paths("/v1"))
    paths.update(_command_paths(""))
    import copy

    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {
            "title": "ipa-twisted agent API",
            "version": version,
            "description": "The REST API of the agent, wire-compatible with "
                           "ironic-python-agent's. Every error answer is "
                           "JSON {faultcode, faultstring}.",
        },
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "securitySchemes": {"agentToken": {
                "type": "apiKey", "in": "query", "name": "agent_token"}},
        },
    })
