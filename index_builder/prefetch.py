"""Run a producer (decode, render, thumbnail) in a worker thread, a few batches ahead of the encoder.

Pillow, pypdfium2 and torch all release the GIL in their heavy calls, so on a multi-core machine the
input work hides behind encoding; the bounded queue keeps memory at ``depth`` batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(iterator: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Yield what ``iterator`` yields, produced in a daemon thread at most ``depth`` items ahead.

    An exception in the producer is re-raised in the consumer; closing the consumer stops the producer.
    """
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for value in iterator:
                if not put(value):
                    return
            put(_DONE)
        except BaseException as err:  # handed to the consumer, which decides
            put(_Failure(err))

    worker = threading.Thread(target=work, name="index_builder-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            value = slots.get()
            if value is _DONE:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
    finally:
        stop.set()
        worker.join(timeout=5)
