"""tune_for_serving freezes what exists, raises the young threshold, shortens the GIL switch
interval, and undoes all three."""

from __future__ import annotations

import gc
import sys

from tessera.service.runtime.interpreter_tuning import tune_for_serving


def test_tune_for_serving_and_undo():
    before, interval = gc.get_threshold(), sys.getswitchinterval()
    undo = tune_for_serving(young_threshold=before[0] + 1000, switch_interval_s=interval / 4)
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (before[0] + 1000, *before[1:])
        assert sys.getswitchinterval() == interval / 4
    finally:
        undo()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
    assert sys.getswitchinterval() == interval
