"""The client against a real `tessera serve` process (tiny dcae-t48 model, 16 tiles per request)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from tessera.client import AsyncClient, Client, errors
from tessera.client.tiles import cut_sheet, image_to_rgb
from tessera.testing.serve import TesseraServer

LATENT_SHAPE = (64, 1, 1)  # dcae-t48


def test_models_and_health(server, tessera):
    info = tessera.models()
    assert info.default == "dcae-t48" and info.get().latent_shape == LATENT_SHAPE
    assert info.limits.max_tiles_per_request == server.max_tiles_per_request
    health = tessera.health()
    assert health.live and health.ready


def test_every_input_type_encodes_to_the_same_latents(make_sheet, tessera, tmp_path):
    sheet = make_sheet(2, 3, seed=1)
    path = tmp_path / "sheet.png"
    sheet.save(path)
    tiles_rgba = np.asarray(sheet).reshape(2, 32, 3, 32, 4).swapaxes(1, 2).reshape(6, 32, 32, 4)
    tiles_rgb, grid = cut_sheet(image_to_rgb(sheet))
    assert grid == (2, 3)

    from_image = tessera.encode(sheet)
    assert from_image.latents.shape == (6, *LATENT_SHAPE) and from_image.latents.dtype == np.float32
    assert from_image.grid == (2, 3) and from_image.model == "dcae-t48"
    for other in (tessera.encode(str(path)), tessera.encode(path), tessera.encode(tiles_rgba), tessera.encode(tiles_rgb)):
        np.testing.assert_allclose(other.latents, from_image.latents, atol=1e-5)

    one_tile = tessera.encode(Image.fromarray(tiles_rgb[4]))
    assert one_tile.grid == (1, 1)
    np.testing.assert_allclose(one_tile.latents[0], from_image.latents[4], atol=1e-5)

    mixed = tessera.encode([sheet, path, tiles_rgb[:2]])
    assert mixed.grids == ((2, 3), (2, 3)) and mixed.counts == (6, 6, 2) and mixed.grid is None
    first, second, third = mixed.split()
    np.testing.assert_allclose(second, from_image.latents, atol=1e-5)
    np.testing.assert_allclose(third, from_image.latents[:2], atol=1e-5)


def test_client_side_cutting_matches_the_servers_png_upload(make_sheet, server, tessera):
    sheet = make_sheet(2, 2, seed=2)
    body = io.BytesIO()
    sheet.save(body, format="PNG")
    response = httpx.post(
        f"{server.url}/v1/encode", content=body.getvalue(),
        headers={"Content-Type": "image/png", "Accept": "application/x-npy", "Authorization": f"Bearer {server.api_key}"},
    )
    assert response.status_code == 200, response.text
    from_server = np.load(io.BytesIO(response.content))
    np.testing.assert_allclose(tessera.encode(sheet).latents, from_server, atol=1e-5)


def test_decode_returns_tiles_and_restores_the_sheet_grid(make_sheet, tessera, tmp_path):
    sheet = make_sheet(3, 2, seed=3)
    result = tessera.encode(sheet)
    tiles = tessera.decode(result.latents)
    assert tiles.shape == (6, 32, 32, 3) and tiles.dtype == np.uint8
    rebuilt = tessera.decode_sheet(result)
    assert rebuilt.size == sheet.size  # 2 columns x 3 rows, as encoded
    np.testing.assert_array_equal(np.asarray(rebuilt)[32:64, 32:64], tiles[3])
    assert tessera.decode_sheet(result.latents).size == (6 * 32, 32)  # no grid known: the server's rule, one row
    assert tessera.decode_sheet(result.latents, columns=4).size == (4 * 32, 2 * 32)


def test_a_sheet_larger_than_one_request_goes_in_chunks_with_progress(make_sheet, tessera):
    sheet = make_sheet(5, 8, seed=4)  # 40 tiles, 16 per request -> 3 chunks
    seen: list[tuple[int, int]] = []
    result = tessera.encode(sheet, progress=lambda done, total: seen.append((done, total)))
    assert result.latents.shape == (40, *LATENT_SHAPE) and result.grid == (5, 8)
    assert len(seen) == 3 and seen[-1] == (40, 40) and all(total == 40 for _, total in seen)
    tiles, _ = cut_sheet(image_to_rgb(sheet))
    np.testing.assert_allclose(tessera.encode(tiles[33:35]).latents, result.latents[33:35], atol=1e-5)

    decoded_seen: list[tuple[int, int]] = []
    rebuilt = tessera.decode_sheet(result, progress=lambda done, total: decoded_seen.append((done, total)))
    assert rebuilt.size == sheet.size and len(decoded_seen) == 3


@pytest.fixture
def patient_server(server, tmp_path) -> Iterator[str]:
    """The session server's settings, but every batch waits out a window: chunks sent together
    queue up together, however fast the model is, so a burst overflows the queue for certain."""
    env = {**server.server_env, "TESSERA_MAX_WAIT_MS": "500", "TESSERA_BATCH_CLOSE_EARLY": "false"}
    with TesseraServer(env, tmp_path / "serve.log").start() as running:
        yield running.url


def test_a_burst_larger_than_the_servers_queue_is_retried_until_done(make_sheet, server, patient_server, caplog):
    tiles, _ = cut_sheet(image_to_rgb(make_sheet(8, 16, seed=5)))  # 128 tiles: 8 chunks, all sent at once

    async def burst() -> list[np.ndarray]:
        async with AsyncClient(patient_server, server.api_key, concurrency=8, backoff=0.05) as client:
            results = await asyncio.gather(*(client.encode(tiles) for _ in range(2)))
        return [r.latents for r in results]

    with caplog.at_level(logging.INFO, logger="tessera.client.async_client"):
        first, second = asyncio.run(burst())
    np.testing.assert_allclose(first, second, atol=1e-5)
    assert any("answered 503" in message for message in caplog.messages), "the queue never overflowed"


def test_wrong_api_key_raises_authentication_error_with_the_servers_detail(server):
    with Client(server.url, api_key="wrong") as client, pytest.raises(errors.AuthenticationError) as caught:
        client.models()
    assert caught.value.status == 401 and str(caught.value) == caught.value.detail and "key" in str(caught.value).lower()


def test_unknown_model_lists_the_known_ones(tessera):
    with pytest.raises(errors.NotFoundError, match="dcae-t48"):
        tessera.encode(np.zeros((1, 32, 32, 3), np.uint8), model="no-such-model")
    with pytest.raises(errors.NotFoundError, match="dcae-t48"):  # several chunks fail: still one plain error
        tessera.encode(np.zeros((40, 32, 32, 3), np.uint8), model="no-such-model")


def test_latents_of_the_wrong_shape_get_the_servers_explanation(tessera):
    with pytest.raises(errors.UnprocessableError) as caught:
        tessera.decode(np.zeros((2, 32), np.float32))
    assert caught.value.status == 422 and caught.value.detail


def test_bad_inputs_fail_before_any_request(tessera, tmp_path):
    odd = tmp_path / "odd.png"
    Image.new("RGB", (40, 32)).save(odd)
    with pytest.raises(errors.InputError, match="odd.png is 40x32 pixels"):
        tessera.encode(odd)
    text = tmp_path / "text.png"
    text.write_text("hello")
    with pytest.raises(errors.InputError, match="not an image"):
        tessera.encode(text)
    with pytest.raises(errors.InputError, match="cannot encode a dict"):
        tessera.encode({"tiles": 1})


def test_server_down_raises_connect_error(dead_url):
    with Client(dead_url) as client, pytest.raises(errors.ConnectError, match="cannot reach"):
        client.models()
