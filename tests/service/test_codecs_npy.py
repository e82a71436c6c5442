"""read_npy and npy_bytes: the cached headers give what numpy gives, and bad headers are refused."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tessera.service.pipeline import npy as npy_codec
from tessera.service.errors import BadRequest, InvalidInput


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3),
        np.linspace(-1, 1, 3 * 64, dtype=np.float32).reshape(3, 64, 1, 1),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    ],
)
@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_read_npy_matches_numpy_load(array, version):
    data = npy(array, version)
    for _ in range(2):  # the second read comes from the header cache
        out = npy_codec.read_npy(data)
        expected = np.load(io.BytesIO(data), allow_pickle=False)
        assert out.dtype == expected.dtype and out.shape == expected.shape and np.array_equal(out, expected)
        assert out.flags.writeable


def test_same_header_other_data_is_read_afresh():
    first, second = np.zeros((1, 32, 32, 3), np.uint8), np.full((1, 32, 32, 3), 7, np.uint8)
    assert npy_codec.read_npy(npy(first)).max() == 0
    assert npy_codec.read_npy(npy(second)).min() == 7


@pytest.mark.parametrize("shape", [(0, 2**40, 2**40), (2**62, 0, 32, 3), (0, 2**62, 2**62, 3)])
def test_empty_array_with_impossible_dimensions_is_refused(shape):
    """Zero elements, so the (empty) data matches the header, but numpy cannot shape it: a 4xx,
    not a server error (found by the schema fuzzer)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    with pytest.raises(InvalidInput, match="cannot be read"):
        npy_codec.read_npy(buffer.getvalue())


def test_header_length_field_that_lies_is_400():
    data = bytearray(npy(np.zeros((1, 4), np.float32)))
    data[8] -= 16  # header length 16 bytes short: the header runs into the data
    with pytest.raises(BadRequest):
        npy_codec.read_npy(bytes(data))


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((1, 64, 1, 1), np.float32),
        np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3),
        np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        np.ones((5, 128), np.float32)[:, ::2],
    ],
)
def test_npy_bytes_is_what_numpy_save_writes(array):
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    for _ in range(2):  # the second answer's header comes from the cache
        assert npy_codec.npy_bytes(array) == buffer.getvalue()
