"""The memory estimate before the download: the model's GGUF header fetched with Range
requests (the real fetch child against the stand-in hub), read without its tensor data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.hfserver import HubServer
from vnode.provider import fetch
from vnode.provider.estimate import EstimateError, estimate_in_subprocess, read_gguf, read_gguf_header
from vnode.provider.models import ModelStore
from vnode.provider.spec import ModelSource
from vnode.provider.tinymodel import TinyModel, write_tiny_model

pytestmark = pytest.mark.timeout(60)
REPO = "test-org/wide-GGUF"
NAME = "wide-Q8_0.gguf"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A real GGUF larger than the first Range request, so the header is a strict prefix."""
    path = write_tiny_model(tmp_path_factory.mktemp("model") / NAME, TinyModel(embedding=1024, feed_forward=2048))
    assert path.stat().st_size > 2 * fetch.HEADER_FIRST_BYTES
    return path


@pytest.fixture
async def hub(model: Path):
    server = HubServer({REPO: {NAME: model.read_bytes()}})
    async with server:
        yield server


def test_the_header_reads_from_a_prefix_and_says_when_it_is_too_short(model: Path, tmp_path: Path):
    head = tmp_path / "head.gguf"
    head.write_bytes(model.read_bytes()[: fetch.HEADER_FIRST_BYTES])
    meta, _ = read_gguf_header(head)
    assert meta == read_gguf(model)[0]
    head.write_bytes(model.read_bytes()[:2000])
    with pytest.raises(EstimateError) as err:
        read_gguf_header(head)
    assert err.value.reason == "HeaderIncomplete"
    head.write_bytes(b"<html>not a model</html>")
    with pytest.raises(EstimateError) as err:
        read_gguf_header(head)
    assert err.value.reason == "InvalidModel"


async def test_the_estimate_from_the_header_matches_the_file_s(hub: HubServer, model: Path, tmp_path: Path):
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    try:
        got = await store.header(ModelSource(kind="hf", repo=REPO, quant="Q8_0"))
        assert got is not None
        head, total = got
        assert head.stat().st_size == fetch.HEADER_FIRST_BYTES and total == model.stat().st_size
        ranged = [h for h in hub.requests if h.kind == "resolve" and h.method == "GET"]
        assert [h.range for h in ranged] == [f"bytes=0-{fetch.HEADER_FIRST_BYTES - 1}"], ranged
        before = await estimate_in_subprocess(head, model_bytes=total, use_cache=False, ctx_size=512)
        after = await estimate_in_subprocess(model, use_cache=False, ctx_size=512)
        assert before.kv_cache_bytes == after.kv_cache_bytes and before.compute_bytes == after.compute_bytes
        assert after.weights_bytes <= before.weights_bytes <= total  # the files, headers included
        # Once the model is in the store, nothing is fetched for its header.
        await store.ensure(ModelSource(kind="hf", repo=REPO, quant="Q8_0"))
        count = len(hub.requests)
        assert await store.header(ModelSource(kind="hf", repo=REPO, quant="Q8_0")) is None
        assert len(hub.requests) == count
    finally:
        await store.close()


async def test_no_header_for_a_missing_model_or_offline(hub: HubServer, tmp_path: Path):
    store = ModelStore(tmp_path / "models", endpoint=hub.url)
    offline = ModelStore(tmp_path / "models", endpoint=hub.url, offline=True)
    try:
        assert await store.header(ModelSource(kind="hf", repo="test-org/missing-GGUF")) is None
        assert await offline.header(ModelSource(kind="hf", repo=REPO)) is None
    finally:
        await store.close()
        await offline.close()
