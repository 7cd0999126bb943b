"""Reading a build's events in pages, and measuring its output without loading it, on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest

from web_node.errors import NotFound
from web_node.store import AsyncStore, JobConfig, StepConfig, Store

T0 = 1_700_000_000.0


def _build_with_events(store: Store, count: int) -> int:
    store.set_pipeline("p", {}, [JobConfig(name="a", steps=(StepConfig(run="true"),), trigger_every_s=None, timeout_s=60.0)])
    build = store.create_build("p", "a", "manual", T0)
    for i in range(count):
        store.append_event(build.id, "log", {"output": f"line {i}\n"}, T0 + i)
    return build.id


def test_list_events_returns_at_most_a_page(store: Store) -> None:
    build_id = _build_with_events(store, 7)
    assert [e.seq for e in store.list_events(build_id, limit=3)] == [1, 2, 3]
    assert [e.seq for e in store.list_events(build_id, after_seq=3, limit=3)] == [4, 5, 6]
    assert [e.seq for e in store.list_events(build_id, after_seq=6, limit=3)] == [7]
    assert store.list_events(build_id, after_seq=7, limit=3) == []
    with pytest.raises(NotFound):
        store.list_events(build_id + 100, limit=3)


async def test_event_pages_walk_the_whole_build_a_page_at_a_time(store: Store) -> None:
    build_id = _build_with_events(store, 7)
    pages = [[e.seq for e in page] async for page in AsyncStore(store).event_pages(build_id, page=3)]
    assert pages == [[1, 2, 3], [4, 5, 6], [7]]
    exact = [[e.seq for e in page] async for page in AsyncStore(store).event_pages(build_id, after_seq=1, page=3)]
    assert exact == [[2, 3, 4], [5, 6, 7]]


def test_output_size_counts_stored_payloads_and_finds_the_marker(store: Store) -> None:
    build_id = _build_with_events(store, 4)
    expected = sum(len(json.dumps({"output": f"line {i}\n"})) for i in range(4))
    assert store.output_size(build_id, "truncated") == (expected, False)
    store.append_event(build_id, "truncated", {"message": "cut"}, T0 + 9)
    size, marked = store.output_size(build_id, "truncated")
    assert size == expected + len(json.dumps({"message": "cut"})) and marked
    assert store.output_size(build_id + 100, "truncated") == (0, False)
