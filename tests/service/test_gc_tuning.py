"""tune_for_serving freezes what exists, raises the young threshold, and undoes both."""

from __future__ import annotations

import gc

from service.gc_tuning import tune_for_serving


def test_tune_for_serving_and_undo():
    before = gc.get_threshold()
    undo = tune_for_serving(young_threshold=before[0] + 1000)
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (before[0] + 1000, *before[1:])
    finally:
        undo()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
