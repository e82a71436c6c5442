import numpy as np
import pytest

from tessera.service.pipeline.cache import CacheValueError, cache_key, decode_value, decode_values, encode_value, tile_hashes


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape", [(64, 1, 1), (128,), (4, 2, 2)])
def test_value_roundtrip_is_exact(dtype, shape):
    latent = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    value = encode_value(latent)
    assert len(value) == 3 + 2 * len(shape) + latent.nbytes
    back = decode_value(value)
    assert back.dtype == latent.dtype and back.shape == shape
    np.testing.assert_array_equal(back, latent)


def test_value_rejects_unknown_dtype_and_garbage():
    with pytest.raises(ValueError, match="float32, float16"):
        encode_value(np.zeros(4, dtype=np.int64))
    good = encode_value(np.zeros((64, 1, 1), dtype=np.float32))
    for bad in (b"", b"\x09\x01\x01", good[:-1], good + b"x"):
        with pytest.raises(CacheValueError):
            decode_value(bad)


def test_tile_hashes_follow_pixels():
    tiles = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    tiles[1, 0, 0, 0] = 1
    a, b, c = tile_hashes(tiles)
    assert a == c != b and len(a) == 32
    rgba = np.zeros((2, 32, 32, 4), dtype=np.uint8)
    rgba[1, ..., 3] = 255  # the same colours, another alpha: another tile
    d, e = tile_hashes(rgba)
    assert d != e and a not in (d, e)
    for bad in (np.zeros((1, 32, 32, 2), np.uint8), np.zeros((1, 32, 32, 3), np.float32)):
        with pytest.raises(ValueError, match="3 or 4"):
            tile_hashes(bad)


def test_key_carries_prefix_weights_hash_and_tile_hash():
    key = cache_key("ab" * 32, b"\x01" * 32)
    assert key == b"tessera:v1:" + b"ab" * 32 + b":" + b"01" * 32


def test_bulk_decode_equals_one_by_one():
    latents = np.random.default_rng(1).standard_normal((40, 64, 1, 1)).astype(np.float32)
    values = [encode_value(z) for z in latents]
    bulk = decode_values(values)
    assert len(bulk) == 40
    for got, want in zip(bulk, latents):
        assert got.shape == want.shape and got.dtype == want.dtype and not got.flags.writeable
        np.testing.assert_array_equal(got, want)
    assert decode_values([]) == []


def test_bulk_decode_of_mixed_values_falls_back_and_reports_bad_ones():
    mixed = [encode_value(np.full((64, 1, 1), i, np.float32)) for i in range(10)]
    mixed[4] = encode_value(np.zeros(128, np.float16))  # another shape and dtype: decoded on its own
    out = decode_values(mixed)
    assert out[4].shape == (128,) and out[4].dtype == np.float16
    assert [float(z.flat[0]) for i, z in enumerate(out) if i != 4] == [float(i) for i in range(10) if i != 4]
    mixed[7] = mixed[7][:-1]  # cut short: reported in its place, the others still decoded
    out = decode_values(mixed)
    assert isinstance(out[7], CacheValueError)
    assert [float(z.flat[0]) for i, z in enumerate(out) if i not in (4, 7)] == [float(i) for i in range(10) if i not in (4, 7)]
    assert isinstance(decode_values([b"junk", *mixed[:3]])[0], CacheValueError)  # even the first one
