"""What the model store counts: bytes received from the network (a resumed download only the
rest), each download's duration by result, and what the store takes on disk, measured again
after each download. Real download children against the stand-in hub of test_models.py."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from tests.unit.provider.test_models import BIG, FILES, REPO, _wait_for, hf, hub, store  # noqa: F401 - fixtures
from vnode import event_metrics
from vnode.provider.models import ModelError, ModelStore

pytestmark = pytest.mark.timeout(60)

REG = CollectorRegistry()
REG.register(event_metrics.MODEL_DOWNLOADED_BYTES)
REG.register(event_metrics.MODEL_DOWNLOAD_SECONDS)


def received() -> float:
    return REG.get_sample_value("vnode_model_downloaded_bytes_total") or 0.0


def downloads(result: str) -> float:
    return REG.get_sample_value("vnode_model_download_duration_seconds_count", {"result": result}) or 0.0


async def test_bytes_and_durations_of_downloads(store: ModelStore) -> None:
    start = (received(), downloads("success"), downloads("failure"))
    await store.ensure(hf(quant="Q8_0"))
    assert received() - start[0] == len(FILES[REPO]["tiny-Q8_0.gguf"])
    assert downloads("success") - start[1] == 1
    with pytest.raises(ModelError):
        await store.ensure(hf("test-org/nope-GGUF"))
    assert downloads("failure") - start[2] == 1
    await store.ensure(hf(quant="Q8_0"))  # in the store already: no download, nothing counted
    assert (received() - start[0], downloads("success") - start[1]) == (len(FILES[REPO]["tiny-Q8_0.gguf"]), 1)


async def test_a_resumed_download_counts_only_what_it_fetched(store: ModelStore, hub) -> None:
    hub.throttle = 100_000
    seen: list[int] = []
    task = asyncio.create_task(store.ensure(hf(BIG[0]), on_progress=lambda d, t: seen.append(d)))
    await _wait_for(lambda: any(d >= 60_000 for d in seen))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [partial] = (store.root / "hf").rglob("*.incomplete")
    kept = partial.stat().st_size
    hub.throttle = None
    before = received()
    await store.ensure(hf(BIG[0]))
    assert received() - before == len(FILES[BIG[0]][BIG[1]]) - kept


async def test_store_size_is_measured_again_after_a_download(store: ModelStore) -> None:
    watch = asyncio.create_task(store.watch_size(interval=3600))  # only a download can make it measure again
    try:
        await _wait_for(lambda: store.stored_bytes is not None)
        empty = store.stored_bytes
        await store.ensure(hf(quant="Q8_0"))
        await _wait_for(lambda: store.stored_bytes >= empty + len(FILES[REPO]["tiny-Q8_0.gguf"]))
    finally:
        watch.cancel()
