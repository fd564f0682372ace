"""batch_heap: the long-lived heap is frozen while a batch runs, the batch's own cycles are still collected,
and the heap is unfrozen when the last (possibly nested or concurrent) batch ends."""

import gc
import weakref

from connector_pipelines.core.memory import batch_heap


class Node:
    def __init__(self):
        self.me = self   # a reference cycle: only the cyclic collector reclaims it


def test_batch_heap_freezes_the_heap_and_still_collects_the_batchs_cycles():
    old = Node()
    old_ref = weakref.ref(old)
    assert gc.get_freeze_count() == 0
    with batch_heap():
        assert gc.get_freeze_count() > 0          # what was alive at the start is out of the collector's way
        del old
        gc.collect()
        assert old_ref() is not None              # frozen: not scanned, so not reclaimed during the batch
        fresh = Node()
        fresh_ref = weakref.ref(fresh)
        del fresh
        gc.collect()
        assert fresh_ref() is None                # the batch's own garbage cycles are collected
        with batch_heap():                        # a nested (or concurrent) batch keeps it frozen
            pass
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None                      # unfrozen: reclaimed by the next full collection


def test_batch_heap_unfreezes_when_the_batch_fails():
    try:
        with batch_heap():
            raise RuntimeError("the batch failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
