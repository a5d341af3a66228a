"""Fixtures shared by several test files."""

import pytest

from omni.unroll.engine import NEEDS, PRIMITIVES, register


@pytest.fixture
def temp_primitive():
    """Register test-only primitives for one test and remove them afterwards."""
    added = []

    def add(name, fn):
        register(name)(fn)
        added.append(name)

    yield add
    for name in added:
        PRIMITIVES.pop(name, None)
        NEEDS.pop(name, None)


@pytest.fixture
def gated(temp_primitive):
    """Two test primitives for runs whose client leaves mid-step: `gated_wait` holds its step until the
    returned gate is set, `gated_mark` records in the returned list that it ran."""
    import threading

    from omni.unroll.engine import Item

    gate, marks = threading.Event(), []

    def wait(engine, ws):
        gate.wait(20)
        return Item("gated_wait", "text", text="waited")

    def mark(engine, ws):
        marks.append("ran")
        return Item("gated_mark", "text", text="marked")

    temp_primitive("gated_wait", wait)
    temp_primitive("gated_mark", mark)
    return gate, marks
