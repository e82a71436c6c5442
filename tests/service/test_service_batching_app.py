"""Dynamic batching through the real app: shared batches, splits, overload, deadlines, failures, drain.

Batch windows run on a ``FakeClock`` where a test needs requests to wait in an open batch, so
nothing depends on how quickly the machine gets the requests there."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from tessera.service.http.app import create_app
from tessera.service.runtime.lifecycle import Phase
from tessera.service.batching.registry import load_registry
from tessera.testing.apps import batcher, serving, settings_for
from tessera.testing.bodies import NPY, load_npy, npy, random_tiles
from tessera.testing.clock import FakeClock
from tessera.testing.events import RecordingSink
from tessera.testing.waiting import until, wait_until

NO_CACHE = {"cache_max_bytes": 0}
WINDOW = {"batch_close_early": False}  # requests wait out the whole window: these tests hold them there


def post_tiles(client, tiles: np.ndarray):
    return client.post("/v1/encode", content=npy(tiles), headers={"Content-Type": NPY, "Accept": NPY})


class SlowModel:
    """Wraps a batcher's model call: waits for ``release`` and records every call's size."""

    def __init__(self, infer) -> None:
        self.infer = infer
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, rows):
        self.sizes.append(len(rows))
        self.entered.set()
        assert self.release.wait(60), "the test never released the model"
        return self.infer(rows)


def test_concurrent_requests_are_batched_together(checkpoint_dir):
    tiles = random_tiles(8, seed=1)
    clock = FakeClock()
    with serving(checkpoint_dir, clock, max_batch_tiles=8, max_wait_ms=5000, **WINDOW, **NO_CACHE) as client:
        with ThreadPoolExecutor(8) as pool:  # the window never ends: the batch closes when it is full
            responses = list(pool.map(lambda i: post_tiles(client, tiles[i : i + 1]), range(8)))
        assert [r.status_code for r in responses] == [200] * 8
        assert client.events.batch_sizes(op="encode") == {8: 1}
        alone = load_npy(post_tiles(client, tiles).content)
        got = np.concatenate([load_npy(r.content) for r in responses])
        np.testing.assert_allclose(got, alone, atol=1e-5)


def test_a_large_request_is_split_and_comes_back_in_order(checkpoint_dir):
    tiles = random_tiles(10, seed=2)
    with serving(checkpoint_dir, max_batch_tiles=4, max_wait_ms=1, **NO_CACHE) as client:
        split = load_npy(post_tiles(client, tiles).content)
        assert client.events.batch_sizes(op="encode") == {4: 2, 2: 1}
        singles = np.concatenate([load_npy(post_tiles(client, tiles[i : i + 1]).content) for i in range(10)])
        np.testing.assert_allclose(split, singles, atol=1e-5)
        r = client.post("/v1/decode", content=npy(split), headers={"Content-Type": NPY, "Accept": NPY})
        assert r.status_code == 200 and load_npy(r.content).shape == (10, 32, 32, 3)
        assert client.events.batch_sizes(op="decode") == {4: 2, 2: 1}


def test_identical_tiles_are_computed_once(checkpoint_dir):
    tile = random_tiles(1, seed=3)
    for cache in ({"cache_max_bytes": 0}, {}):  # keyed by their bytes, or by the hashes the cache needed anyway
        with serving(checkpoint_dir, max_batch_tiles=16, max_wait_ms=1, **cache) as client:
            latents = load_npy(post_tiles(client, np.repeat(tile, 12, axis=0)).content)
            assert np.all(latents == latents[0])
            assert client.events.of("batch_computed", op="encode")[0]["tiles"] == 12
            assert client.events.of("batch_computed", op="encode")[0]["unique"] == 1


def test_a_full_queue_answers_503_with_retry_after(checkpoint_dir):
    with serving(checkpoint_dir, max_batch_tiles=2, max_wait_ms=0, max_queue_tiles=4, max_tiles_per_request=4, **NO_CACHE) as client:
        encoder = batcher(client)
        slow = SlowModel(encoder.infer)
        encoder.infer = slow
        with ThreadPoolExecutor(2) as pool:
            busy = pool.submit(post_tiles, client, random_tiles(2, seed=4))  # in the model
            assert slow.entered.wait(60)
            queued = pool.submit(post_tiles, client, random_tiles(4, seed=5))  # fills the queue
            wait_until(lambda: encoder.queued_tiles == 4, what="the queue is full")
            refused = post_tiles(client, random_tiles(1, seed=6))
            slow.release.set()
            assert busy.result().status_code == 200 and queued.result().status_code == 200
        assert refused.status_code == 503, refused.text
        assert refused.json()["code"] == "overloaded" and int(refused.headers["Retry-After"]) >= 1
        assert "4 tiles are queued (limit 4)" in refused.json()["detail"]
        text = client.get("/metrics").text
        assert 'tessera_rejected_tiles_total{model="tiny",op="encode",reason="queue_full"} 1.0' in text


def test_the_deadline_gives_504_and_nothing_is_computed(checkpoint_dir):
    clock = FakeClock()  # the batch window never ends; the request's deadline (real time) does
    with serving(checkpoint_dir, clock, max_batch_tiles=64, max_wait_ms=3000, request_timeout_s=0.3, **WINDOW, **NO_CACHE) as client:
        encoder = batcher(client)
        r = post_tiles(client, random_tiles(3, seed=7))
        assert r.status_code == 504 and r.json()["code"] == "deadline_exceeded", r.text
        wait_until(lambda: encoder.queued_tiles == 0, what="the abandoned tiles left the queue")
        assert client.events.rejected("deadline") == 3
        clock.advance(3)  # the window ends with nothing left to compute
        wait_until(lambda: clock.deadlines == [None, None, None], what="the model threads wait for new tiles")
        assert client.events.count("batch_computed") == 0


def test_a_failing_model_call_gives_503_and_the_thread_recovers(checkpoint_dir):
    def broken(rows):
        raise RuntimeError("CUDA out of memory (simulated)")

    clock = FakeClock()  # the batch closes when full: 3 requests of one tile
    with serving(checkpoint_dir, clock, max_batch_tiles=3, max_wait_ms=200, **WINDOW, **NO_CACHE) as client:
        encoder = batcher(client)
        working = encoder.infer
        encoder.infer = broken
        with ThreadPoolExecutor(3) as pool:
            failed = list(pool.map(lambda i: post_tiles(client, random_tiles(1, seed=i)), range(3)))
        for r in failed:
            assert r.status_code == 503 and r.json()["code"] == "inference_failed", r.text
            assert "CUDA out of memory (simulated)" in r.json()["detail"] and "Retry-After" in r.headers
        encoder.infer = working
        assert post_tiles(client, random_tiles(3, seed=9)).status_code == 200
        assert client.events.count("batch_failed", op="encode") == 1


def test_shutdown_drains_admitted_requests_and_refuses_new_ones(checkpoint_dir):
    """The lifespan's shutdown, driven directly, while requests wait in an open batch."""
    settings = settings_for(checkpoint_dir, max_batch_tiles=64, max_wait_ms=600, shutdown_grace_s=30, **WINDOW, **NO_CACHE)
    clock, events = FakeClock(), RecordingSink()
    app = create_app(settings, registry=load_registry(settings, clock), sinks=[events])

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tessera", timeout=60) as http:
            lifespan = contextlib.AsyncExitStack()
            await lifespan.enter_async_context(app.router.lifespan_context(app))
            encoder = app.state.tessera.registry.get(None).encoder
            await asyncio.wait_for(encoder.ready.wait(), 60)

            def post(seed):
                return http.post("/v1/encode", content=npy(random_tiles(1, seed=seed)), headers={"Content-Type": NPY})

            admitted = [asyncio.ensure_future(post(i)) for i in range(3)]
            await until(lambda: encoder.queued_tiles == 3, what="three requests wait in the open batch")
            shutdown = asyncio.ensure_future(lifespan.aclose())
            await until(lambda: app.state.tessera.lifecycle.phase is Phase.DRAINING, what="the lifespan drains")
            refused = await post(9)
            clock.advance(0.6)  # the window ends; the drain waits for the batch
            await shutdown
            return [await a for a in admitted], refused, encoder

    responses, refused, encoder = asyncio.run(go())
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert refused.status_code == 503 and refused.json()["code"] == "shutting_down" and "Retry-After" in refused.headers
    assert events.batch_sizes(op="encode") == {3: 1} and not encoder.accepting
    assert app.state.tessera.lifecycle.phase is Phase.STOPPED


def test_a_lone_request_does_not_wait_out_the_window(checkpoint_dir):
    """With the default early close, nobody else on the way means the batch goes at once; the
    window here never ends (a fake clock), so a request that waited for it would never be answered."""
    tiles = random_tiles(3)
    with serving(checkpoint_dir, FakeClock(), max_batch_tiles=8, max_wait_ms=10_000, **NO_CACHE) as client:
        for i in range(3):
            assert post_tiles(client, tiles[i : i + 1]).status_code == 200
        assert client.events.batch_sizes(op="encode") == {1: 3}
