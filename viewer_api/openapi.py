"""The OpenAPI 3.1 description of the API beyond DICOMweb (PS3.18 describes that part), served
at ``/openapi.json`` and fuzzed by the test suite (schemathesis: no 500s)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
    "required": ["error", "status"],
}
_ARRAY = {"type": "array"}
_UID = {"type": "string", "pattern": "^[0-9.]{1,64}$"}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 64}
_HOSPITAL = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}
_PATIENT = {
    "type": "object",
    "properties": {"hospital": _HOSPITAL, "patient_id": _TEXT, "issuer": _TEXT},
    "required": ["patient_id"],
}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad input", 401: "no or bad token", 403: "not allowed", 404: "not found"}
    return {
        str(c): {
            "description": text.get(c, "error"),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for c in codes
    }


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema or {"type": "object"}}},
    }


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_PATIENT_QUERY = [
    _path_param("id", _TEXT),
    _query("hospital", _HOSPITAL),
    _query("issuer", _TEXT),
]


def spec(server_url: str = "/") -> dict[str, Any]:
    """The description; ``server_url`` is where clients reach the API."""
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "CloudFilm regional API", "version": "1"},
        "servers": [{"url": server_url}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": _ERROR},
        },
        "paths": {
            "/healthz": {
                "get": {
                    "summary": "liveness",
                    "security": [],
                    "responses": {"200": _json("up")},
                }
            },
            "/patients/{id}/studies": {
                "get": {
                    "summary": "all studies of a hospital's patient's person, newest first",
                    "security": secured,
                    "parameters": [
                        *_PATIENT_QUERY,
                        {
                            "name": "X-Break-Glass-Reason",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 200},
                        },
                    ],
                    "responses": {"200": _json("the studies"), **_errors(400, 401, 403)},
                }
            },
            "/api/patients/links": {
                "post": {
                    "summary": "link a hospital's patient to a person (admin)",
                    "security": secured,
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "properties": {
                                "hospital": _HOSPITAL,
                                "patient_id": _TEXT,
                                "issuer": _TEXT,
                                "id_issuer": _TEXT,
                                "id": {"type": "string", "maxLength": 64},
                            },
                            "required": ["patient_id", "id_issuer", "id"],
                        }
                    ),
                    "responses": {"201": _json("linked"), **_errors(400, 401, 403)},
                },
                "delete": {
                    "summary": "unlink a hospital's patient (admin)",
                    "security": secured,
                    "requestBody": _json_body(_PATIENT),
                    "responses": {"200": _json("unlinked"), **_errors(400, 401, 403, 404)},
                },
            },
            "/api/patients/merge": {
                "post": {
                    "summary": "move every link of one person to another (admin)",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"from": _PATIENT, "into": _PATIENT},
                                    "required": ["from", "into"],
                                }
                            }
                        },
                    },
                    "responses": {"200": _json("merged"), **_errors(400, 401, 403, 404)},
                }
            },
            "/api/patients/{id}/consents": {
                "get": {
                    "summary": "consent grants of the patient's person",
                    "security": secured,
                    "parameters": _PATIENT_QUERY,
                    "responses": {
                        "200": _json("grants", {"type": "array"}),
                        **_errors(400, 401, 403),
                    },
                }
            },
            "/api/patients/{id}/access-history": {
                "get": {
                    "summary": "who opened the patient's studies (from the audit log)",
                    "security": secured,
                    "parameters": _PATIENT_QUERY,
                    "responses": {
                        "200": _json("accesses", {"type": "array"}),
                        **_errors(400, 401, 403),
                    },
                }
            },
            "/api/consents": {
                "post": {
                    "summary": "record the patient's consent from the one-time code their "
                    "page shows (a grant to the caller's hospital); without a code: 403",
                    "security": secured,
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "properties": {
                                "patient": _PATIENT,
                                "code": {"type": "string", "pattern": "^[0-9]{8}$"},
                            },
                            "required": ["patient"],
                        }
                    ),
                    "responses": {"201": _json("granted"), **_errors(400, 401, 403, 429)},
                }
            },
            "/api/consent-requests": {
                "post": {
                    "summary": "ask the patient (of the caller's hospital) for consent",
                    "security": secured,
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "properties": {
                                "patient": _PATIENT,
                                "study_uid": _UID,
                                "only_me": {"type": "boolean"},
                                "ttl_hours": {"type": "integer", "minimum": 1},
                            },
                            "required": ["patient"],
                        }
                    ),
                    "responses": {"201": _json("the request"), **_errors(400, 401, 403)},
                }
            },
            "/api/patients/{id}/consent-requests": {
                "get": {
                    "summary": "the consent requests the caller's hospital sent for a patient",
                    "security": secured,
                    "parameters": _PATIENT_QUERY,
                    "responses": {"200": _json("requests", _ARRAY), **_errors(400, 401, 403)},
                }
            },
            "/api/admin/identity-reviews": {
                "get": {
                    "summary": "person links held for review (admin)",
                    "security": secured,
                    "parameters": [_query("all", {"enum": ["1", "true"]})],
                    "responses": {"200": _json("held links", _ARRAY), **_errors(401, 403)},
                }
            },
            "/api/admin/identity-reviews/{id}/{action}": {
                "post": {
                    "summary": "approve (apply) or reject a held person link (admin)",
                    "security": secured,
                    "parameters": [
                        _path_param("id", {"type": "string", "maxLength": 20}),
                        _path_param("action", {"enum": ["approve", "reject"]}),
                    ],
                    "responses": {"200": _json("decided"), **_errors(401, 403, 404)},
                }
            },
            "/api/audit/break-glass": {
                "get": {
                    "summary": "break-glass reads for review (auditor, admin)",
                    "security": secured,
                    "responses": {"200": _json("reads", _ARRAY), **_errors(401, 403)},
                }
            },
            **_film_consent_paths(),
            "/api/consents/{id}": {
                "delete": {
                    "summary": "revoke a consent grant",
                    "security": secured,
                    "parameters": [_path_param("id", {"type": "string", "maxLength": 64})],
                    "responses": {"200": _json("revoked"), **_errors(400, 401, 403, 404)},
                }
            },
            "/api/studies/{study}/reports": {
                "get": {
                    "summary": "reports of a study",
                    "security": secured,
                    "parameters": [_path_param("study", _UID)],
                    "responses": {
                        "200": _json("reports", {"type": "array"}),
                        **_errors(400, 401, 403, 404),
                    },
                },
                "post": {
                    "summary": "attach a report (radiologists of the study's hospital)",
                    "security": secured,
                    "parameters": [
                        _path_param("study", _UID),
                        _query("status", {"enum": ["preliminary", "final"]}),
                        _query("mutual_recognition", {"enum": ["true", "false"]}),
                        _query("title", {"type": "string", "maxLength": 128}),
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "responses": {"201": _json("attached"), **_errors(400, 401, 403, 404)},
                },
            },
            "/api/reports/{id}": {
                "get": {
                    "summary": "a report's content (text/plain or application/pdf)",
                    "security": secured,
                    "parameters": [_path_param("id", {"type": "string", "maxLength": 64})],
                    "responses": {
                        "200": {"description": "the report"},
                        **_errors(400, 401, 403, 404),
                    },
                }
            },
            "/api/admin/hospitals": {
                "get": {
                    "summary": "the region's hospitals (admin)",
                    "security": secured,
                    "responses": {
                        "200": _json("hospitals", {"type": "array"}),
                        **_errors(401, 403),
                    },
                },
                "post": {
                    "summary": "add or rename a hospital (admin)",
                    "security": secured,
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "properties": {"id": _HOSPITAL, "name": _TEXT},
                            "required": ["id", "name"],
                        }
                    ),
                    "responses": {"201": _json("added"), **_errors(400, 401, 403)},
                },
            },
            "/api/admin/users": {
                "get": {
                    "summary": "registered users (admin)",
                    "security": secured,
                    "responses": {"200": _json("users", _ARRAY), **_errors(401, 403)},
                },
                "post": {
                    "summary": "register a user at a hospital with a role (admin)",
                    "security": secured,
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "properties": {
                                "subject": _TEXT,
                                "hospital": _HOSPITAL,
                                "role": {"enum": ["admin", "radiologist", "clinician", "auditor"]},
                            },
                            "required": ["subject", "hospital", "role"],
                        }
                    ),
                    "responses": {"201": _json("registered"), **_errors(400, 401, 403)},
                },
            },
            "/api/admin/users/{subject}/disable": {
                "post": {
                    "summary": "disable a user: their tokens stop working (admin)",
                    "security": secured,
                    "parameters": [_path_param("subject", _TEXT)],
                    "responses": {"200": _json("disabled"), **_errors(400, 401, 403, 404)},
                }
            },
            "/api/shares": {
                "post": {
                    "summary": "create a cloud-film link for a study or all of a patient's studies",
                    "security": secured,
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "properties": {
                                "scope": {"enum": ["study", "patient"]},
                                "study_uid": _UID,
                                "patient_id": _TEXT,
                                "issuer": {"type": "string", "maxLength": 64},
                                "hospital": _TEXT,
                                "ttl_hours": {"type": "integer"},
                                "allow_download": {"type": "boolean"},
                                "code": {"type": "string", "description": '4-6 digits or "auto"'},
                                "audience": {"enum": ["patient", "doctor"]},
                            },
                        }
                    ),
                    "responses": {"201": _json("the link"), **_errors(400, 401, 403, 404)},
                }
            },
            "/api/shares/{id}": {
                "get": {
                    "summary": "a cloud-film link: scope, state, views (never its code)",
                    "security": secured,
                    "parameters": [_path_param("id", {"type": "string", "maxLength": 64})],
                    "responses": {"200": _json("the link"), **_errors(400, 401, 403, 404)},
                },
                "delete": {
                    "summary": "revoke a cloud-film link",
                    "security": secured,
                    "parameters": [_path_param("id", {"type": "string", "maxLength": 64})],
                    "responses": {"204": {"description": "revoked"}, **_errors(400, 401, 403, 404)},
                },
            },
            "/api/shares/{id}/unlock": {
                "post": {
                    "summary": "clear a link's lockout after wrong extraction codes",
                    "security": secured,
                    "parameters": [_path_param("id", {"type": "string", "maxLength": 64})],
                    "responses": {
                        "204": {"description": "unlocked"},
                        **_errors(400, 401, 403, 404),
                    },
                }
            },
        },
    }


def _film_consent_paths() -> dict[str, Any]:
    """The patient's consent under their own cloud-film link (the token is the credential)."""
    token = _path_param("token", {"type": "string", "maxLength": 200})
    denied = _errors(400, 403, 404)
    return {
        "/film/{token}/api/me": {
            "get": {
                "summary": "whether this link gives consent, and requests waiting",
                "parameters": [token],
                "responses": {"200": _json("what the page may offer"), **denied},
            }
        },
        "/film/{token}/api/hospitals": {
            "get": {
                "summary": "the region's registered hospitals",
                "parameters": [token],
                "responses": {"200": _json("hospitals", _ARRAY), **denied},
            }
        },
        "/film/{token}/api/consents": {
            "get": {
                "summary": "the patient's consents",
                "parameters": [token],
                "responses": {"200": _json("grants", _ARRAY), **denied},
            },
            "post": {
                "summary": "the patient grants a registered hospital (or one clinician) consent",
                "parameters": [token],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "properties": {
                            "hospital": _HOSPITAL,
                            "subject": {"type": "string", "maxLength": 128},
                            "study_uid": _UID,
                            "ttl_hours": {"type": "integer", "minimum": 1},
                        },
                        "required": ["hospital"],
                    }
                ),
                "responses": {"201": _json("granted"), **denied},
            },
        },
        "/film/{token}/api/consent-requests": {
            "get": {
                "summary": "staff's consent requests, newest first",
                "parameters": [token],
                "responses": {"200": _json("requests", _ARRAY), **denied},
            }
        },
        "/film/{token}/api/consent-requests/{id}/{action}": {
            "post": {
                "summary": "approve or decline a consent request",
                "parameters": [
                    token,
                    _path_param("id", {"type": "string", "maxLength": 64}),
                    _path_param("action", {"enum": ["approve", "decline"]}),
                ],
                "responses": {"200": _json("decided"), **denied},
            }
        },
        "/film/{token}/api/consent-code": {
            "post": {
                "summary": "a one-time consent code (8 digits, 10 minutes) for a clinician",
                "parameters": [token],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "properties": {
                            "only_that_clinician": {"type": "boolean"},
                            "study_uid": _UID,
                            "ttl_hours": {"type": "integer", "minimum": 1},
                        },
                    }
                ),
                "responses": {"201": _json("the code"), **denied},
            }
        },
    }


async def openapi_json(request: web.Request) -> web.Response:
    from viewer_api.context import services

    return web.json_response(spec(services(request).settings.public_base_url or "/"))
