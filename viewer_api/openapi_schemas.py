"""OpenAPI building blocks for the route table (viewer_api/routes.py): parameter and body
schemas, and response objects."""

from __future__ import annotations

from typing import Any

ARRAY: dict[str, Any] = {"type": "array"}
UID: dict[str, Any] = {"type": "string", "pattern": "^[0-9.]{1,64}$"}
TEXT: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 64}
HOSPITAL: dict[str, Any] = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"}
ID: dict[str, Any] = {"type": "string", "maxLength": 64}
PATIENT: dict[str, Any] = {
    "type": "object",
    "properties": {"hospital": HOSPITAL, "patient_id": TEXT, "issuer": TEXT},
    "required": ["patient_id"],
}

PATH_PARAMS: dict[str, dict[str, Any]] = {
    "study": UID,
    "series": UID,
    "instance": UID,
    "frames": {"type": "string", "pattern": "^[0-9]{1,6}(,[0-9]{1,6}){0,255}$"},
    "frame": {"type": "string", "pattern": "^[0-9]{1,6}$"},
    "tag": {"type": "string", "pattern": "^[0-9A-Fa-f]{8}$"},
    "token": {"type": "string", "maxLength": 200},
    "id": ID,
    "subject": TEXT,
    "name": {"type": "string", "maxLength": 64},
}
"""The schema of a path parameter, by its name in the route's path."""


def json(
    description: str, schema: dict[str, Any] | None = None, *, media: str = ""
) -> dict[str, Any]:
    return {
        "description": description,
        "content": {(media or "application/json"): {"schema": schema or {"type": "object"}}},
    }


def multipart(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
    }


def image(description: str, media: tuple[str, ...] = ("image/jpeg", "image/png")) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"description": description, "content": {m: binary for m in media}}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


QIDO_PARAMS: tuple[dict[str, Any], ...] = (
    query("limit", {"type": "integer", "minimum": 1}),
    query("offset", {"type": "integer", "minimum": 0}),
    query("includefield", {"type": "string", "maxLength": 200}),
    query("fuzzymatching", {"enum": ["true", "false"]}),
    query("PatientID", {"type": "string", "maxLength": 64}),
    query("PatientName", {"type": "string", "maxLength": 64}),
    query("StudyDate", {"type": "string", "maxLength": 17}),
    query("StudyInstanceUID", {"type": "string", "maxLength": 200}),
    query("Modality", {"type": "string", "maxLength": 16}),
)
RENDER_PARAMS: tuple[dict[str, Any], ...] = (
    query("viewport", {"type": "string", "maxLength": 32}),
    query("window", {"type": "string", "maxLength": 64}),
    query("quality", {"type": "integer", "minimum": 1, "maximum": 100}),
)
PATIENT_QUERY: tuple[dict[str, Any], ...] = (query("hospital", HOSPITAL), query("issuer", TEXT))
BREAK_GLASS_HEADER: dict[str, Any] = {
    "name": "X-Break-Glass-Reason",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 200},
}
REPORT_QUERY: tuple[dict[str, Any], ...] = (
    query("status", {"enum": ["preliminary", "final"]}),
    query("mutual_recognition", {"enum": ["true", "false"]}),
    query("title", {"type": "string", "maxLength": 128}),
)

MULTIPART_BODY: dict[str, Any] = {
    "required": True,
    "content": {"multipart/related": {"schema": {"type": "string", "format": "binary"}}},
}
STOW_OK: dict[str, dict[str, Any]] = {
    "200": json("all stored", media="application/dicom+json"),
    "202": json("some stored", media="application/dicom+json"),
}
REPORT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "text/plain": {"schema": {"type": "string"}},
        "application/pdf": {"schema": {"type": "string", "format": "binary"}},
    },
}
CODE_FORM: dict[str, Any] = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {"type": "object", "properties": {"code": {"type": "string"}}}
        }
    },
}
FORM_BODY: dict[str, Any] = {
    "required": True,
    "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}}},
}
HTML_OK: dict[str, dict[str, Any]] = {
    "200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}
}

LINK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "hospital": HOSPITAL,
        "patient_id": TEXT,
        "issuer": TEXT,
        "id_issuer": TEXT,
        "id": {"type": "string", "maxLength": 64},
    },
    "required": ["patient_id", "id_issuer", "id"],
}
MERGE: dict[str, Any] = {
    "type": "object",
    "properties": {"from": PATIENT, "into": PATIENT},
    "required": ["from", "into"],
}
CONSENT_BY_CODE: dict[str, Any] = {
    "type": "object",
    "properties": {"patient": PATIENT, "code": {"type": "string", "pattern": "^[0-9]{8}$"}},
    "required": ["patient"],
}
CONSENT_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        "patient": PATIENT,
        "study_uid": UID,
        "only_me": {"type": "boolean"},
        "ttl_hours": {"type": "integer", "minimum": 1},
    },
    "required": ["patient"],
}
HOSPITAL_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {"id": HOSPITAL, "name": TEXT},
    "required": ["id", "name"],
}
USER_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "subject": TEXT,
        "hospital": HOSPITAL,
        "role": {"enum": ["admin", "radiologist", "clinician", "auditor"]},
    },
    "required": ["subject", "hospital", "role"],
}
SHARE_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "scope": {"enum": ["study", "patient"]},
        "study_uid": UID,
        "patient_id": TEXT,
        "issuer": {"type": "string", "maxLength": 64},
        "hospital": TEXT,
        "ttl_hours": {"type": "integer"},
        "allow_download": {"type": "boolean"},
        "code": {"type": "string", "description": '4-6 digits or "auto"'},
        "audience": {"enum": ["patient", "doctor"]},
    },
}
CHILD_LINK_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "study_uid": UID,
        "ttl_hours": {"type": "integer", "minimum": 1},
        "allow_download": {"type": "boolean"},
        "code": {"type": "string", "description": '4-6 digits or "auto"'},
    },
}
PATIENT_GRANT_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "hospital": HOSPITAL,
        "subject": {"type": "string", "maxLength": 128},
        "study_uid": UID,
        "ttl_hours": {"type": "integer", "minimum": 1},
    },
    "required": ["hospital"],
}
CONSENT_CODE_BODY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "only_that_clinician": {"type": "boolean"},
        "study_uid": UID,
        "ttl_hours": {"type": "integer", "minimum": 1},
    },
}
