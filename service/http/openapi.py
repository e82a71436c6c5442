"""The OpenAPI document of one running service: FastAPI's schema, made exact for what this
instance serves once its models are loaded.

- every ``model`` query parameter lists the loaded model names (and "", the default model);
- operations ask for the bearer key only when ``TESSERA_API_KEYS`` is set;
- the JSON ``images`` of ``/v1/encode`` are base64 (``format: byte``), at most
  ``max_tiles_per_request`` of them (every image holds at least one tile);
- the JSON ``latents`` of ``/v1/decode`` are 1 to ``max_tiles_per_request`` rows, each in the
  shape of a loaded model's latent (nested or flat), of float32-range numbers.

Clients generated from the schema, and fuzzers, then send requests that reach the decoders
instead of stopping at 404 and 422. Before the models are loaded the generic schema is served.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from tessera.service.pipeline.codecs import JSON

FLOAT32_MAX = 3.4028234663852886e38


def _array(items: dict[str, Any], length: int | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "array", "items": items}
    if length is not None:
        schema["minItems"] = schema["maxItems"] = length
    return schema


def latent_row_schemas(shapes: list[tuple[int, ...]]) -> list[dict[str, Any]]:
    """JSON schemas of one latent of each shape: nested ``[C, H, W]`` (the forms the JSON body
    accepts: one or three dimensions) and flat ``[C*H*W]``; duplicates removed."""
    number = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
    forms: dict[tuple[int, ...], dict[str, Any]] = {}
    for shape in shapes:
        for form in ((math.prod(shape),), tuple(shape)):
            if len(form) not in (1, 3) or form in forms:
                continue
            schema = number
            for size in reversed(form):
                schema = _array(schema, size)
            forms[form] = schema
    return list(forms.values())


def specialize(
    schema: dict[str, Any], model_names: list[str], latent_shapes: list[tuple[int, ...]], max_tiles: int, keys_required: bool
) -> None:
    """Narrow FastAPI's generic ``schema`` (in place) to the loaded models, the limits, and
    whether API keys are required at all."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "security" in operation and not keys_required:
                operation["security"] = []  # no TESSERA_API_KEYS: nothing to send
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "query" and parameter.get("name") == "model":
                    parameter["schema"] = {"type": "string", "enum": [*sorted(model_names), ""]}  # "": the default

    def json_body(path: str) -> dict[str, Any] | None:
        content = schema["paths"].get(path, {}).get("post", {}).get("requestBody", {}).get("content", {})
        return content.get(JSON, {}).get("schema")

    encode = json_body("/v1/encode")
    if encode is not None:
        images = encode["properties"]["images"]
        images["items"] = {"type": "string", "format": "byte", "description": "base64 of the image file's bytes"}
        images["maxItems"] = max_tiles
    decode = json_body("/v1/decode")
    if decode is not None:
        rows = latent_row_schemas(latent_shapes)
        decode["properties"]["latents"] = {
            "type": "array",
            "items": rows[0] if len(rows) == 1 else {"anyOf": rows},
            "minItems": 1,
            "maxItems": max_tiles,
            "description": "[N, *latent_shape] or flattened [N, prod(latent_shape)] of the chosen model",
        }


def install_openapi(app: FastAPI) -> None:
    """Serve the specialized schema at ``/openapi.json`` (and ``/docs``) while the app is serving."""
    generic: Callable[[], dict[str, Any]] = app.openapi
    cached: list[Any] = [None, None]  # the models it was made for, the schema

    def openapi() -> dict[str, Any]:
        state = app.state.tessera
        if state.registry is None:
            return generic()
        if cached[0] is not state.registry:
            schema = copy.deepcopy(generic())
            models = list(state.registry.models.values())
            names, shapes = [m.name for m in models], [m.latent_shape for m in models]
            specialize(schema, names, shapes, state.limits.max_tiles, keys_required=state.keys.enabled)
            cached[:] = [state.registry, schema]
        return cached[1]

    app.openapi = openapi
