"""Fuzz the whole API (DICOMweb, the staff API, the cloud-film page and the patient's own API)
from its own OpenAPI description (schemathesis) against the real stack: whatever the input,
never a 500."""

from __future__ import annotations

import collections
import itertools
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from cloudfilm.synth import synthesize_study
from tests.e2e.conftest import Server, http, start_server, stop_server
from tests.e2e.test_end_to_end import storescu, wait_indexed


@schemathesis.serializer("multipart/related")
def _multipart_related(ctx: Any, value: Any) -> bytes:
    """Generated STOW-RS and ingest bodies go as they are: bytes the multipart parser must
    refuse cleanly (the header carries no boundary)."""
    return value if isinstance(value, bytes) else str(value).encode()


@schemathesis.serializer("application/offset+octet-stream")
def _upload_chunk(ctx: Any, value: Any) -> bytes:
    """Generated chunks of a resumable upload go as raw bytes."""
    return value if isinstance(value, bytes) else str(value).encode()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    d = tmp_path_factory.mktemp("fuzz")
    proc, server = start_server(d / "data", d / "server.log")
    try:
        paths = synthesize_study(d / "mr", modality="MR", images=2, seed=5)
        storescu(server, d / "mr")
        first = pydicom.dcmread(paths[0], stop_before_pixels=True)
        wait_indexed(server, server.token(), first.StudyInstanceUID, len(paths))
        share = http(
            f"{server.base}/api/shares",
            token=server.token(),
            method="POST",
            body={"scope": "patient", "patient_id": str(first.PatientID)},
        ).json()
        film_token = str(share["url"]).rsplit("/film/", 1)[1]  # type: ignore[index]
        yield server, server.token(role="admin"), film_token
    finally:
        stop_server(proc)


def test_no_input_makes_the_api_fail_with_a_500(live: tuple[Server, str, str]) -> None:
    """Every operation of the description, with generated valid and invalid inputs (plain
    hypothesis over schemathesis' strategies: its pytest plugin does not run on pytest 9).
    Under /film/{token} the token is a real patient link's, so the inputs reach the handlers."""
    server, token, film_token = live
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 70
    seen: dict[str, set[int]] = collections.defaultdict(set)
    for operation, mode in itertools.product(operations, GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=12,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            if case.path_parameters and "token" in case.path_parameters:
                case.path_parameters["token"] = film_token
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            seen[f"{case.operation.method.upper()} {case.operation.path}"].add(response.status_code)
            case.validate_response(response, checks=(not_a_server_error,))

        try:
            run()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # nothing to make invalid (no parameters)
    # the token was accepted: every operation got past authentication at least once, and the
    # inputs reached the handlers (some succeeded, some were refused as bad input)
    assert len(seen) == len(operations)
    assert all(codes - {401} for codes in seen.values()), seen
    statuses = set().union(*seen.values())
    assert {200, 400, 404} <= statuses, seen


def test_the_description_is_served_without_a_token(live: tuple[Server, str, str]) -> None:
    server, _, _ = live
    with urllib.request.urlopen(f"{server.base}/openapi.json") as r:
        spec = json.loads(r.read())
    assert spec["openapi"].startswith("3.") and "/patients/{id}/studies" in spec["paths"]
    for path in ("/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
                 "/film/{token}/api/consents", "/api/admin/users/{subject}/{action}", "/metrics",
                 "/api/shares/{id}/qr.{kind}"):  # fmt: skip
        assert path in spec["paths"], path
