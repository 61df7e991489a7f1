"""daemon.app.freeze_heap: what the daemon does to the cyclic garbage collector once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from daemon.app import GC_YOUNG_THRESHOLD, freeze_heap


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_the_startup_heap_is_frozen_and_young_objects_collected_less_often() -> None:
    _, older, oldest = gc.get_threshold()
    gc.unfreeze()
    freeze_heap()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, older, oldest)
