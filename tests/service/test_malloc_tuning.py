"""keep_freed_memory sets glibc's thresholds (and is a no-op elsewhere)."""

from __future__ import annotations

import platform

from tessera.service.runtime.malloc_tuning import keep_freed_memory


def test_keep_freed_memory_takes_effect_on_glibc():
    took = keep_freed_memory()
    if platform.libc_ver()[0] == "glibc":
        assert took
    assert keep_freed_memory() == took  # calling it again is harmless
