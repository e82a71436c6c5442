import numpy as np
import pytest

from service.cache import CacheValueError, cache_key, decode_value, encode_value, tile_hashes


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
    with pytest.raises(ValueError, match="RGB"):
        tile_hashes(np.zeros((1, 32, 32, 4), dtype=np.uint8))


def test_key_carries_prefix_weights_hash_and_tile_hash():
    key = cache_key("ab" * 32, b"\x01" * 32)
    assert key == b"tessera:v1:" + b"ab" * 32 + b":" + b"01" * 32
