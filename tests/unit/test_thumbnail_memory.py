"""The report's thumbnail pool admits decodes by their estimated memory: canned sizes into the budget,
and the estimate read from an image's header without decoding it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from batchclf.decode import open_image
from batchclf.report.thumbnails import PEAK_BYTES_PER_PIXEL, THUMBNAIL_SIZE, MemoryBudget, peak_bytes


def _run_all(budget: MemoryBudget, costs: list[int], threads: int) -> list[list[tuple[int, int]]]:
    """Run one task a cost, ``threads`` at a time; return what was in flight each time one was admitted."""
    running: dict[int, int] = {}
    seen: list[list[tuple[int, int]]] = []
    lock = threading.Lock()

    def task(index: int) -> None:
        with budget.admit(costs[index]):
            with lock:
                running[index] = costs[index]
                seen.append(sorted(running.items()))
            time.sleep(0.005)
            with lock:
                del running[index]

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(task, range(len(costs))))
    return seen


def test_decodes_in_flight_stay_within_the_budget_and_one_larger_than_it_runs_alone():
    costs = [60, 60, 30, 500, 10, 40, 90, 20] * 4
    budget = MemoryBudget(100)
    seen = _run_all(budget, costs, threads=8)
    assert len(seen) == len(costs)  # every task ran
    for in_flight in seen:
        total = sum(cost for _, cost in in_flight)
        assert total <= 100 or [cost for _, cost in in_flight] == [500], in_flight
    assert budget.largest_in_flight == 500 and budget.in_flight == 0
    assert max(len(in_flight) for in_flight in seen) > 1  # small ones did run side by side


def test_a_large_decode_is_not_overtaken_by_small_ones_that_arrive_after_it():
    budget = MemoryBudget(100)
    order: list[str] = []
    release_first = threading.Event()

    def hold(name: str, cost: int, until: threading.Event | None = None) -> None:
        with budget.admit(cost):
            order.append(f"{name} in")
            if until is not None:
                until.wait(5)
            order.append(f"{name} out")

    def wait_for_queue(length: int) -> None:
        deadline = time.monotonic() + 5
        while budget.waiting < length and time.monotonic() < deadline:
            time.sleep(0.001)
        assert budget.waiting == length

    first = threading.Thread(target=hold, args=("first", 60, release_first))
    first.start()
    while "first in" not in order:
        time.sleep(0.001)
    large = threading.Thread(target=hold, args=("large", 500))
    large.start()
    wait_for_queue(1)
    small = threading.Thread(target=hold, args=("small", 10))  # would fit beside "first", but "large" came first
    small.start()
    wait_for_queue(2)
    assert order == ["first in"]
    release_first.set()
    for thread in (first, large, small):
        thread.join(5)
    assert order == ["first in", "first out", "large in", "large out", "small in", "small out"]


def test_the_estimate_comes_from_the_header_after_draft(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (4000, 3000), (90, 120, 30)).save(photo)
    with open_image(photo.read_bytes()) as image:
        image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # the JPEG decoder will work at 1/8 scale
        assert image.size == (500, 375) and peak_bytes(image) == 500 * 375 * PEAK_BYTES_PER_PIXEL["RGB"]
    deep = tmp_path / "deep.png"
    Image.fromarray(np.zeros((2000, 3000), np.uint16)).save(deep)  # 6 MP of zeros: a few kB on disk
    with open(deep, "rb") as stream, open_image(stream) as image:
        image.draft("RGB", (THUMBNAIL_SIZE, THUMBNAIL_SIZE))  # nothing to draft in a PNG
        assert peak_bytes(image) == 3000 * 2000 * PEAK_BYTES_PER_PIXEL["I;16"]
        assert image.tile  # estimated before a pixel was decoded (loading empties the tile list)
