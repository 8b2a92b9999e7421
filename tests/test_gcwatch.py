"""Tests of hasync.gcwatch: the collector's tuning and the timing of its pauses."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hasync.gcwatch import YOUNG_THRESHOLD, GcWatch, tune


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_tune_raises_the_young_threshold_and_keeps_the_older_ones(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)
    assert tune() == (700, 10, 10)
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    assert gc.get_freeze_count() > 0  # the start-up's objects are not scanned again


def test_tune_still_collects_cycles(thresholds: None) -> None:
    tune()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_each_collection_is_timed_in_its_generation() -> None:
    now = [10.0]
    w = GcWatch(clock=lambda: now[0])
    for gen, pause, collected in ((0, 0.001, 5), (2, 0.25, 7), (0, 0.003, 0)):
        w._on("start", {"generation": gen})
        now[0] += pause
        w._on("stop", {"generation": gen, "collected": collected, "uncollectable": 1})
    d = w.as_dict()
    assert d["collections"] == [2, 0, 1]
    assert d["pause_s"] == [0.004, 0.0, 0.25]
    assert d["max_pause_ms"] == [3.0, 0.0, 250.0]
    assert d["collected"] == [5, 0, 7] and d["uncollectable"] == 3


def test_an_odd_callback_is_ignored() -> None:
    w = GcWatch(clock=lambda: 1.0)
    w._on("stop", {"generation": 7})
    w._on("stop", "not a dict")  # type: ignore[arg-type]
    w._on("stop", {})
    assert w.as_dict()["collections"] == [0, 0, 0]


def test_installed_it_sees_real_collections_and_removed_it_stops() -> None:
    w = GcWatch()
    w.install()
    w.install()  # once only
    try:
        gc.collect(2)
        gc.collect(1)
    finally:
        w.remove()
    assert w.collections[2] == 1 and w.collections[1] == 1
    assert w.pause_s[2] > 0
    gc.collect(2)
    assert w.collections[2] == 1
