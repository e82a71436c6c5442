"""``.npy`` bytes in and out, never unpickled: the header is parsed and checked by rules of our
own before any data is touched, and answers are written with a cached header."""

from __future__ import annotations

import functools
import io
import math

import numpy as np

from tessera.service.errors import BadRequest, InvalidInput

_NPY_MAGIC = b"\x93NUMPY"
NPY_MAX_HEADER_BYTES = 4096  # numpy.save writes a few dozen bytes; numpy itself reads up to 10,000
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class NpyHeaderError(ValueError):
    """A header that is not what ``numpy.save`` writes; the message is ours, never numpy's."""


def _npy_data_offset(data: bytes) -> int:
    """Where the array data starts: magic and version (8 bytes), header length (2 bytes in
    format 1.0, 4 in 2.0), header."""
    width = 2 if data[6:7] == b"\x01" else 4
    if len(data) < 8 + width:
        raise ValueError("the header is cut short")
    return 8 + width + int.from_bytes(data[8 : 8 + width], "little")


@functools.lru_cache(maxsize=64)
def _npy_header(prefix: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of one .npy header (magic and version included).

    numpy parses the header as a Python literal, so a crafted one can hold literals numpy lets
    through (a bool as a dimension) or a nesting deep enough to exhaust the parser: every
    failure raises ``NpyHeaderError`` with a message of ours, and the dimensions must be plain
    ints.

    Cached: clients send the same few headers again and again, and parsing one (numpy runs
    ``ast.literal_eval`` on it) costs more than reading a whole tile. Headers that fail to
    parse raise and are not cached.
    """
    stream = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in _NPY_HEADER_READERS:
            raise NpyHeaderError(f"format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
        shape, fortran_order, dtype = _NPY_HEADER_READERS[version](stream, max_header_size=NPY_MAX_HEADER_BYTES)
    except NpyHeaderError:
        raise
    except Exception:  # noqa: BLE001 - whatever a crafted literal makes numpy raise (incl. RecursionError)
        raise NpyHeaderError("it is not a header as numpy.save writes it") from None
    if not all(type(d) is int and d >= 0 for d in shape):  # numpy accepts True, and -1, as a dimension
        raise NpyHeaderError("'shape' must be a tuple of non-negative integers")
    if stream.tell() != len(prefix):
        raise NpyHeaderError("the header length field does not match the header")
    return shape, fortran_order, dtype


def read_npy(data: bytes) -> np.ndarray:
    """An array from ``.npy`` bytes; never unpickles (object arrays are refused).

    The header is read and checked first: the dtype must be plain numeric and the data must be
    exactly as long as the declared shape says, so a small body that declares a huge array is
    refused before anything is allocated.
    """
    if not data.startswith(_NPY_MAGIC):
        raise BadRequest("body is not an .npy file (no \\x93NUMPY magic); write it with numpy.save")
    try:
        start = _npy_data_offset(data)
        if start > NPY_MAX_HEADER_BYTES:
            raise NpyHeaderError(f"the header is longer than {NPY_MAX_HEADER_BYTES} bytes")
        shape, order, dtype, count = _npy_layout(data[:start])
    except NpyHeaderError as exc:
        raise BadRequest(f"unreadable .npy header: {exc}; write it with numpy.save") from None
    except ValueError:
        raise BadRequest("unreadable .npy header: it is cut short; write it with numpy.save") from None
    declared, held = count * dtype.itemsize, len(data) - start
    if declared != held:
        raise BadRequest(
            f".npy header declares shape {list(shape)} of {dtype} ({declared} bytes) but the body holds {held} bytes "
            f"of data; send the whole file written by numpy.save"
        )
    try:  # an empty array may still declare dimensions numpy cannot index, e.g. (0, 2**62)
        return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape, order=order).copy()
    except ValueError as exc:
        raise InvalidInput(f".npy shape {list(shape)} cannot be read ({exc}); send tiles as [N, 32, 32, 3]", code="bad_shape") from None


@functools.lru_cache(maxsize=64)
def _npy_layout(prefix: bytes) -> tuple[tuple[int, ...], str, np.dtype, int]:
    """Shape, order ("C" or "F"), dtype and element count of an array with this header; the
    dtype checked (cached with the header: the checks cost more than reading a tile)."""
    shape, fortran_order, dtype = _npy_header(prefix)
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise InvalidInput(f"dtype {dtype} is not accepted; send a plain numeric array", code="bad_dtype")
    return shape, "F" if fortran_order else "C", dtype, math.prod(shape)  # Python ints: no overflow


def npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as .npy bytes, the same as ``numpy.save`` writes for a C-ordered array."""
    array = np.ascontiguousarray(array)
    return _npy_prefix(array.dtype, array.shape) + array.tobytes()


@functools.lru_cache(maxsize=64)
def _npy_prefix(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """Magic, version and header of a C-ordered array; cached, since answers repeat a few shapes
    and formatting a header costs more than copying a tile's latent."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(buffer, header)
    except ValueError:  # a header too long for format 1.0
        buffer = io.BytesIO()
        np.lib.format.write_array_header_2_0(buffer, header)
    return buffer.getvalue()
