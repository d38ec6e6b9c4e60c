"""The latency tracker's two readings of a queueing upstream: its unloaded latency and whether
answers swell. Pure: answers are fed with the number in flight when each was sent."""

from __future__ import annotations

from pacekeeper.core.latency import LatencyTracker


def _window(tracker: LatencyTracker, latency_s: float, in_flight: int, n: int = 16) -> None:
    for _ in range(n):
        tracker.observe(latency_s, in_flight)


def test_a_small_queue_held_for_long_does_not_raise_the_unloaded_latency() -> None:
    # A controller holding a few requests past a server's capacity sees answers about 10%
    # slower, window after window. Counted as unloaded, they would lift the base that
    # swelling is judged against, and the controller would then tolerate a longer queue
    # still (a ratchet: the base rose 30% in a minute on a modelled vLLM server).
    tracker = LatencyTracker()
    _window(tracker, 1.0, in_flight=6, n=64)  # slow start: unloaded, few in flight
    base_s = tracker.base_s
    for _ in range(50):
        _window(tracker, 1.1, in_flight=22)
    assert tracker.base_s == base_s


def test_higher_loads_still_settle_a_base_read_from_one_window() -> None:
    # Slow start passes the lowest load in one window: answers no slower at a higher load
    # are unloaded too and refine that first reading.
    tracker = LatencyTracker()
    _window(tracker, 1.0, in_flight=4)
    _window(tracker, 1.1, in_flight=12)
    assert 1.0 < tracker.base_s < 1.1


def test_a_base_read_a_fifth_low_from_one_window_is_corrected_by_ordinary_windows() -> None:
    # One window of 16 lognormal answers can read a fifth below the typical median. Against
    # that base, ordinary windows read 25-30% slower and, one reading past 1.3 by chance, cut
    # the window from 20 to 9 on a modelled server that serves 21 at once. Until the base
    # rests on more than one window, readings that are not a queue (up to 1.3) settle it.
    tracker = LatencyTracker()
    _window(tracker, 0.95, in_flight=6)
    _window(tracker, 1.2, in_flight=12)
    assert tracker.base_s > 1.0
    _window(tracker, 1.3, in_flight=14)
    assert not tracker.swollen(1.3)


def test_one_slow_reading_against_a_base_from_one_window_is_not_yet_a_queue() -> None:
    tracker = LatencyTracker()
    _window(tracker, 1.0, in_flight=6)
    _window(tracker, 2.0, in_flight=12, n=8)  # a few long answers lift one reading
    assert tracker.ratio > 1.3
    assert not tracker.swollen(1.3)
    _window(tracker, 1.6, in_flight=30, n=32)  # a real queue holds: believed
    assert tracker.swollen(1.3)


def test_against_a_settled_base_one_slow_window_is_a_queue_at_once() -> None:
    tracker = LatencyTracker()
    _window(tracker, 1.0, in_flight=6, n=48)
    _window(tracker, 1.5, in_flight=30)
    assert tracker.swollen(1.3)
