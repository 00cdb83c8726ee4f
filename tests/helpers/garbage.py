"""What a piece of code leaves for the garbage collector: reference cycles, which reference
counting alone does not free and the daemon's GC thresholds collect only rarely."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """The type names of what the block leaves in reference cycles, the collector held off
    meanwhile (the list is filled when the block ends)."""
    found: list[str] = []
    gc.collect()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found += [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
