"""The blocking client mirrors AsyncClient: every public coroutine has a written-out blocking
twin with the same parameters, so editors and type checkers see what the client can do."""

from __future__ import annotations

import inspect

from tessera.client import AsyncClient, Client


def public_coroutines(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in inspect.getmembers(cls, inspect.iscoroutinefunction)
            if not name.startswith("_") and name != "aclose"}


def test_every_public_coroutine_has_a_blocking_twin_with_the_same_signature():
    coroutines = public_coroutines(AsyncClient)
    assert set(coroutines) == {"encode", "decode", "decode_sheet", "models", "health"}
    for name, signature in coroutines.items():
        blocking = getattr(Client, name)
        assert not inspect.iscoroutinefunction(blocking), name
        assert "Client." + name in blocking.__qualname__  # written in the class, not generated
        assert inspect.signature(blocking) == signature, name


def test_the_methods_are_defined_in_the_class_body():
    assert {"encode", "decode", "decode_sheet", "models", "health", "close"} <= set(vars(Client))
