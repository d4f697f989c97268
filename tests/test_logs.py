"""Logging set-up: waitress's queue warnings are sampled, not one per request."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from maild.logs import QUEUE_LOG_INTERVAL, WAITRESS_QUEUE, Sampled, setup_logging


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def queue_log() -> Iterator[tuple[logging.Logger, Capture, list[float]]]:
    now = [100.0]
    logger = logging.getLogger("test.sampled")
    capture = Capture()
    logger.addHandler(capture)
    logger.addFilter(Sampled(60.0, clock=lambda: now[0]))
    logger.propagate = False
    yield logger, capture, now
    logger.handlers.clear()
    logger.filters.clear()


def test_sampled_lets_one_through_per_interval_and_counts_the_rest(
    queue_log: tuple[logging.Logger, Capture, list[float]],
) -> None:
    logger, capture, now = queue_log
    for depth in range(1, 6):
        logger.warning("Task queue depth is %d", depth)
    assert capture.lines == ["Task queue depth is 1"]
    now[0] += 59.9
    logger.warning("Task queue depth is %d", 7)
    assert len(capture.lines) == 1
    now[0] += 0.1
    logger.warning("Task queue depth is %d", 3)
    assert capture.lines[-1] == "Task queue depth is 3 (and 5 more in the last 60 s)"
    now[0] += 60
    logger.warning("Task queue depth is %d", 2)
    assert capture.lines[-1] == "Task queue depth is 2"  # nothing was held back this time


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, queue = logging.getLogger(), logging.getLogger(WAITRESS_QUEUE)
    handlers, level, filters = root.handlers[:], root.level, queue.filters[:]
    yield
    root.handlers[:], queue.filters[:] = handlers, filters
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_setup_logging_samples_waitress_queue_warnings() -> None:
    setup_logging("INFO")
    filters = logging.getLogger(WAITRESS_QUEUE).filters
    assert len(filters) == 1
    assert isinstance(filters[0], Sampled) and filters[0].interval == QUEUE_LOG_INTERVAL
    setup_logging("INFO")  # again (a test or a reload): still one filter
    assert len(logging.getLogger(WAITRESS_QUEUE).filters) == 1
