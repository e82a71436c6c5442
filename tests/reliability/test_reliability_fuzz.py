"""Schemathesis against the service's own OpenAPI schema: whatever it generates, valid or not,
is answered 2xx or 4xx with an explanation; never 5xx.

In process and bounded: the app runs under a TestClient (lifespan, batchers and cache real),
the schema is the one it serves at /openapi.json, and every operation gets a fixed number of
generated cases. Image and npy bodies come from ``reliability_bodies``, so that they reach the
decoders instead of stopping at the first byte; JSON bodies and parameters are schemathesis'
own, valid (positive) and schema-violating (negative).
"""

from __future__ import annotations

import collections
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.formats import unregister_string_format
from schemathesis.specs.openapi.media_types import unregister_all

from reliability_bodies import image_base64, images, npy_bodies
from tessera.testing.apps import serving

LIMITS = {"max_tiles_per_request": 16, "max_body_bytes": 256 * 1024, "max_image_pixels": 128 * 128, "max_batch_tiles": 16}
POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
PLAN = [  # operation, generation mode, cases
    ("POST /v1/encode", POSITIVE, 300),
    ("POST /v1/encode", NEGATIVE, 150),
    ("POST /v1/decode", POSITIVE, 300),
    ("POST /v1/decode", NEGATIVE, 150),
    ("GET /v1/models", POSITIVE, 5),
    ("GET /healthz", POSITIVE, 3),
    ("GET /readyz", POSITIVE, 3),
    ("GET /metrics", POSITIVE, 3),
]
ACCEPTS = [None, None, "*/*", "application/json", "application/x-npy", "image/png", "image/*;q=0.5, */*;q=0.1",
           "text/html", "application/x-npy;q=0", "application/json;q=abc", ",,;", "\u00e9/\u00e9"]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
# what a schema-violating request may get: 413 too (a body over the limit is the first thing checked)
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 404, 406, 413, 415, 422]}}})
DROPPED_HEADERS = {"accept", "accept-encoding", "connection", "user-agent", "x-schemathesis-testcaseid"}


@pytest.fixture(scope="module")
def fuzz(checkpoint_dir, tmp_path_factory):
    """(client, schema, statuses, pickle marker): the app serving and its schema loaded."""
    marker = tmp_path_factory.mktemp("fuzz") / "unpickled"
    schemathesis.openapi.media_type("image/png", images(), aliases=["image/jpeg", "image/webp", "image/gif", "image/bmp"])
    schemathesis.openapi.media_type("application/x-npy", npy_bodies(marker=marker))
    schemathesis.openapi.format("byte", image_base64())
    try:
        with serving(checkpoint_dir, **LIMITS) as client:
            schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json(), config=CONFIG)
            yield client, schema, collections.Counter(), marker
    finally:
        unregister_all()
        unregister_string_format("byte")


def send(client, case, accept: str | None):
    """The case through the TestClient (schemathesis builds the request, httpx sends it)."""
    request = case.as_transport_kwargs(base_url="http://testserver")
    headers = {k: str(v).encode("latin-1") for k, v in request.get("headers", {}).items() if k.lower() not in DROPPED_HEADERS}
    if accept is not None:
        headers["Accept"] = accept.encode("latin-1")  # as sent on the wire
    content = request.get("data")
    if "json" in request:
        content = json.dumps(request["json"]).encode()
    return client.request(request["method"], request["url"], params=request.get("params"), headers=headers, content=content)


def explained(response) -> None:
    """A 4xx body is {"detail": <a sentence>, "code": <snake_case>}."""
    if response.status_code < 400:
        return
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"detail", "code"}, response.text[:300]
    assert len(body["detail"]) >= 15 and body["code"].replace("_", "").isalpha(), body


@pytest.mark.slow
@pytest.mark.parametrize("operation, mode, cases", PLAN, ids=[f"{op} {mode.value}" for op, mode, _ in PLAN])
def test_generated_requests_never_get_a_server_error(fuzz, measurements, operation, mode, cases):
    client, schema, statuses, marker = fuzz
    method, path = operation.split()
    strategy = schema[path][method].as_strategy(generation_mode=mode)

    @given(case=strategy, accept=st.sampled_from(ACCEPTS))
    @settings(max_examples=cases, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    def run(case, accept):
        response = send(client, case, accept)
        statuses[(operation, response.status_code)] += 1
        assert response.status_code < 500, (response.status_code, response.text[:300])
        explained(response)
        case.validate_response(response, checks=CHECKS)

    run()
    assert not marker.exists(), "an npy body was unpickled"
    seen = {status: n for (op, status), n in statuses.items() if op == operation}
    record = measurements.setdefault("fuzz", {"operations": {}})
    record["operations"][f"{operation} {mode.value}"] = {"cases": sum(seen.values()), "statuses": {str(k): v for k, v in sorted(seen.items())}}
    statuses.clear()
