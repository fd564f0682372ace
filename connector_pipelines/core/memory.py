"""Keep the cyclic garbage collector off the long-lived heap while a batch runs.

A run's process holds Dagster, the definitions and the clients: hundreds of thousands of long-lived
objects. A batch allocates many short-lived ones (records, rendered fields, ADF documents, JSON), which
triggers collections, and each full collection walks the whole heap again — measured at ~0.5 ms of CPU
per record, a fifth of a notification run's CPU (``make bench``, gc_ms_per_record). ``batch_heap()`` moves
everything alive when the batch starts into the collector's permanent generation (``gc.freeze``), so
collections during the batch scan only the batch's own objects; cycles the batch creates are still
collected. When the last concurrent batch of the process ends, the frozen objects go back to the oldest
generation (``gc.unfreeze``), where the next full collection reclaims whatever has died meanwhile.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0


@contextmanager
def batch_heap() -> Iterator[None]:
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                gc.unfreeze()
