"""ModelStore against a local stand-in hub: resolution, auth, checksum, sharing, cancel/resume, offline.

Every download runs the real child process (`python -m vnode.provider.fetch`) with huggingface_hub
pointed at tests.support.hfserver through the endpoint parameter; no test touches the internet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.hfserver import HubServer
from vnode.provider.models import ModelError, ModelStore
from vnode.provider.spec import ModelSource

pytestmark = pytest.mark.timeout(60)

REPO = "test-org/tiny-GGUF"
SPLIT = "test-org/split-GGUF"
GATED = "test-org/gated-GGUF"
TOKEN = "hf_test_token_123"
BIG = ("test-org/big-GGUF", "big-Q4_K_M.gguf")


def gguf(size: int, seed: int) -> bytes:
    return b"GGUF" + random.Random(seed).randbytes(size - 4)


FILES = {
    REPO: {
        "tiny-Q4_K_M.gguf": gguf(300_000, 1),
        "tiny-Q4_K_S.gguf": gguf(280_000, 2),
        "tiny-Q8_0.gguf": gguf(400_000, 3),
        "tiny-IQ4_K_M.gguf": gguf(200_000, 4),  # "q4_k_m" is a substring of its name: must not be picked
        "mmproj-tiny-Q4_K_M.gguf": gguf(100_000, 5),
        "README.md": b"# tiny\n",
    },
    SPLIT: {
        "big-Q4_K_M-00001-of-00003.gguf": gguf(150_000, 6),
        "big-Q4_K_M-00002-of-00003.gguf": gguf(150_000, 7),
        "big-Q4_K_M-00003-of-00003.gguf": gguf(150_000, 8),
        "other-F16.gguf": gguf(100_000, 9),
    },
    GATED: {"gated-Q4_K_M.gguf": gguf(200_000, 10)},
    BIG[0]: {BIG[1]: gguf(600_000, 11)},  # for throttled downloads: progress, sharing, cancel
}


def hf(repo: str = REPO, **kw: object) -> ModelSource:
    return ModelSource(kind="hf", repo=repo, **kw)


@pytest.fixture
async def hub():
    server = HubServer(FILES, gated={GATED: TOKEN})
    async with server:
        yield server


@pytest.fixture
async def store(hub: HubServer, tmp_path: Path):
    s = ModelStore(tmp_path / "models", endpoint=hub.url)
    yield s
    await s.close()


def fetch_children() -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "vnode.provider.fetch" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


async def _wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and (p.suffix in (".gguf", ".incomplete")))


async def test_quant_resolution_like_llama_cpp(store: ModelStore, hub: HubServer) -> None:
    q8 = await store.ensure(hf(quant="Q8_0"))
    assert q8.name == "tiny-Q8_0.gguf" and q8.read_bytes() == FILES[REPO]["tiny-Q8_0.gguf"]
    assert q8.is_relative_to(store.root / "hf" / REPO / hub.commit(REPO))
    assert (await store.ensure(hf(quant="q4_k_s"))).name == "tiny-Q4_K_S.gguf"  # case-insensitive
    assert (await store.ensure(hf(quant="Q4_K_M"))).name == "tiny-Q4_K_M.gguf"  # not IQ4_K_M, not mmproj
    default = await store.ensure(hf())  # no quant: Q4_K_M like llama.cpp
    assert default.name == "tiny-Q4_K_M.gguf"
    # Already downloaded and verified: answered from the index, no child, no request.
    before = len(hub.requests)
    assert await store.ensure(hf(quant="Q8_0")) == q8
    assert len(hub.requests) == before
    index = json.loads((store.root / "index.json").read_text())
    assert f"hf|{REPO}|main|quant:Q8_0" in index["models"]


async def test_explicit_file_and_split_model(store: ModelStore, hub: HubServer) -> None:
    path = await store.ensure(hf(file="tiny-Q4_K_S.gguf"))
    assert path.name == "tiny-Q4_K_S.gguf" and path.read_bytes() == FILES[REPO]["tiny-Q4_K_S.gguf"]

    first = await store.ensure(hf(SPLIT, quant="Q4_K_M"))
    assert first.name == "big-Q4_K_M-00001-of-00003.gguf"
    for name, data in FILES[SPLIT].items():
        if "Q4_K_M" in name:
            assert (first.parent / name).read_bytes() == data  # every part, next to the first
    assert hub.count(file="other-F16.gguf") == 0


async def test_missing_repo_quant_or_file_is_model_not_found(store: ModelStore) -> None:
    with pytest.raises(ModelError) as e:
        await store.ensure(hf("test-org/nope-GGUF"))
    assert e.value.reason == "ModelNotFound"
    with pytest.raises(ModelError) as e:
        await store.ensure(hf(quant="Q2_K"))
    assert e.value.reason == "ModelNotFound"
    assert "Q2_K" in e.value.message and "tiny-Q4_K_M.gguf" in e.value.message and "tiny-Q8_0.gguf" in e.value.message
    assert "mmproj" not in e.value.message
    with pytest.raises(ModelError) as e:
        await store.ensure(hf(file="tiny-F32.gguf"))
    assert e.value.reason == "ModelNotFound" and "tiny-Q8_0.gguf" in e.value.message
    with pytest.raises(ModelError) as e:
        await store.ensure(hf(revision="v9"))
    assert e.value.reason == "ModelNotFound"


async def test_gated_repo_needs_the_token(store: ModelStore, hub: HubServer) -> None:
    with pytest.raises(ModelError) as e:
        await store.ensure(hf(GATED))
    assert e.value.reason == "GatedModel"
    assert "HF_TOKEN" in e.value.message and "Secret" in e.value.message
    with pytest.raises(ModelError) as e:
        await store.ensure(hf(GATED), token="hf_wrong")
    assert e.value.reason == "GatedModel"
    hub.throttle = 50_000
    task = asyncio.create_task(store.ensure(hf(GATED), token=TOKEN))
    await _wait_for(lambda: bool(store.progress()))
    [child] = fetch_children()
    assert TOKEN not in " ".join(child.cmdline())  # passed in the environment, not argv
    hub.throttle = None
    path = await task
    assert path.read_bytes() == FILES[GATED]["gated-Q4_K_M.gguf"]
    assert [h.authorized for h in hub.requests if h.kind == "resolve" and h.status == 200] == [True]
    assert leftovers(store.root) == [str(path.relative_to(store.root))]
    # The hub's /api is open for gated repos (like huggingface.co); gating it too also works.
    hub.gate_api = True
    with pytest.raises(ModelError) as e:
        await store.ensure(hf(GATED, quant="Q8_0"))
    assert e.value.reason == "GatedModel"


async def test_corrupted_body_is_checksum_mismatch_and_deleted(store: ModelStore, hub: HubServer) -> None:
    hub.corrupt.add("tiny-Q8_0.gguf")
    with pytest.raises(ModelError) as e:
        await store.ensure(hf(quant="Q8_0"))
    assert e.value.reason == "ChecksumMismatch"
    assert leftovers(store.root) == []
    assert not (store.root / "index.json").exists()
    hub.corrupt.clear()
    path = await store.ensure(hf(quant="Q8_0"))
    assert path.read_bytes() == FILES[REPO]["tiny-Q8_0.gguf"]


async def test_progress_callbacks(store: ModelStore, hub: HubServer) -> None:
    hub.throttle = 400_000  # 600 KB in ~1.5 s
    seen: list[tuple[int, int]] = []
    snapshots: list[dict[str, tuple[int, int]]] = []

    def on_progress(done: int, total: int) -> None:
        seen.append((done, total))
        snapshots.append(store.progress())

    path = await store.ensure(hf(BIG[0]), on_progress=on_progress)
    size = len(FILES[BIG[0]][BIG[1]])
    assert path.stat().st_size == size
    assert len(seen) >= 3, seen
    assert seen[-1] == (size, size)
    assert all(t == size for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert any(0 < d < size for d, _ in seen)
    assert snapshots[0] == {BIG[0]: seen[0]}
    assert store.progress() == {}


async def test_concurrent_ensure_shares_one_download(store: ModelStore, hub: HubServer) -> None:
    hub.throttle = 1_000_000
    a: list[tuple[int, int]] = []
    b: list[tuple[int, int]] = []
    pa, pb = await asyncio.gather(
        store.ensure(hf(BIG[0]), on_progress=lambda d, t: a.append((d, t))),
        store.ensure(hf(BIG[0], quant=None), on_progress=lambda d, t: b.append((d, t))),
    )
    assert pa == pb
    assert hub.count(file=BIG[1]) == 1
    assert hub.count("info") == 1
    assert a and b and a[-1] == b[-1] == (len(FILES[BIG[0]][BIG[1]]),) * 2


async def test_cancel_kills_the_child_and_a_later_ensure_resumes(store: ModelStore, hub: HubServer) -> None:
    hub.throttle = 100_000  # 600 KB would take 6 s
    seen: list[int] = []
    task = asyncio.create_task(store.ensure(hf(BIG[0]), on_progress=lambda d, t: seen.append(d)))
    await _wait_for(lambda: any(d >= 60_000 for d in seen))
    [child] = fetch_children()
    pid = child.pid
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not psutil.pid_exists(pid)
    assert store.progress() == {}
    [partial] = (store.root / "hf").rglob("*.incomplete")
    kept = partial.stat().st_size
    assert kept >= 60_000

    hub.throttle = None
    path = await store.ensure(hf(BIG[0]))
    assert path.read_bytes() == FILES[BIG[0]][BIG[1]]
    last = [h for h in hub.requests if h.kind == "resolve" and h.method == "GET"][-1]
    assert last.range is not None and int(last.range.removeprefix("bytes=").rstrip("-")) >= kept
    assert leftovers(store.root) == [str(path.relative_to(store.root))]


async def test_one_waiter_cancelled_the_other_still_gets_the_model(store: ModelStore, hub: HubServer) -> None:
    hub.throttle = 1_000_000
    first = asyncio.create_task(store.ensure(hf(BIG[0])))
    second = asyncio.create_task(store.ensure(hf(BIG[0])))
    await _wait_for(lambda: bool(store.progress()))
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await second).read_bytes() == FILES[BIG[0]][BIG[1]]
    assert hub.count(file=BIG[1]) == 1


async def test_offline_mode_uses_the_index(store: ModelStore, hub: HubServer, tmp_path: Path) -> None:
    online = await store.ensure(hf(quant="Q4_K_M"))
    before = len(hub.requests)
    offline = ModelStore(store.root, offline=True)
    try:
        assert await offline.ensure(hf(quant="Q4_K_M")) == online  # the index, no child
        assert await offline.ensure(hf()) == online  # no quant: Q4_K_M found in the store by the child
        with pytest.raises(ModelError) as e:
            await offline.ensure(hf(quant="Q8_0"))
        assert e.value.reason == "OfflineMissing" and "tiny-Q4_K_M.gguf" in e.value.message
        with pytest.raises(ModelError) as e:
            await offline.ensure(ModelSource(kind="url", url=f"{hub.url}/{REPO}/resolve/main/tiny-Q8_0.gguf"))
        assert e.value.reason == "OfflineMissing"
    finally:
        await offline.close()
    assert len(hub.requests) == before


async def test_url_source(store: ModelStore, hub: HubServer) -> None:
    url = f"{hub.url}/{REPO}/resolve/main/tiny-Q8_0.gguf"
    path = await store.ensure(ModelSource(kind="url", url=url))
    assert path.read_bytes() == FILES[REPO]["tiny-Q8_0.gguf"]
    assert path.is_relative_to(store.root / "url")
    entry = json.loads((store.root / "index.json").read_text())["models"][f"url|{url}"]
    assert entry["sha256"] == hub.sha256(REPO, "tiny-Q8_0.gguf") and entry["sha256_verified"] is True

    hub.corrupt.add("tiny-Q4_K_S.gguf")  # the URL's X-Linked-Etag gives the sha256 to check against
    with pytest.raises(ModelError) as e:
        await store.ensure(ModelSource(kind="url", url=f"{hub.url}/{REPO}/resolve/main/tiny-Q4_K_S.gguf"))
    assert e.value.reason == "ChecksumMismatch"
    with pytest.raises(ModelError) as e:
        await store.ensure(ModelSource(kind="url", url=f"{hub.url}/{REPO}/resolve/main/missing.gguf"))
    assert e.value.reason == "ModelNotFound"


async def test_url_without_checksum_is_recorded_and_non_gguf_rejected(store: ModelStore) -> None:
    from aiohttp import web

    model = gguf(50_000, 12)
    async def plain(request: web.Request) -> web.Response:  # no ETag, no Range: a bare web server
        if request.path == "/m.gguf":
            return web.Response(body=model)
        return web.Response(text="<html>sign in</html>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/{name}", plain)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = "http://127.0.0.1:%d" % runner.addresses[0][1]
    try:
        path = await store.ensure(ModelSource(kind="url", url=f"{base}/m.gguf"))
        assert path.read_bytes() == model
        entry = json.loads((store.root / "index.json").read_text())["models"][f"url|{base}/m.gguf"]
        assert entry["sha256_verified"] is False and entry["sha256"] == hashlib.sha256(model).hexdigest()
        with pytest.raises(ModelError) as e:
            await store.ensure(ModelSource(kind="url", url=f"{base}/error.gguf"))
        assert e.value.reason == "InvalidModel"
        assert leftovers(store.root) == [str(path.relative_to(store.root))]
    finally:
        await runner.cleanup()


async def test_path_source(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "local").mkdir(parents=True)
    good = root / "local" / "m.gguf"
    good.write_bytes(gguf(1000, 1))
    (root / "local" / "bad.gguf").write_bytes(b"NOPE" + bytes(100))
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(gguf(1000, 1))
    s = ModelStore(root)
    assert await s.ensure(ModelSource(kind="path", path=str(good))) == good
    for path, reason in (
        (root / "local" / "missing.gguf", "ModelNotFound"),
        (root / "local" / "bad.gguf", "InvalidModelPath"),
        (outside, "InvalidModelPath"),
        (root / "local" / ".." / ".." / "outside.gguf", "InvalidModelPath"),
    ):
        with pytest.raises(ModelError) as e:
            await s.ensure(ModelSource(kind="path", path=str(path)))
        assert e.value.reason == reason, path


async def test_close_stops_running_downloads(store: ModelStore, hub: HubServer) -> None:
    hub.throttle = 100_000
    task = asyncio.create_task(store.ensure(hf(BIG[0])))
    await _wait_for(lambda: bool(fetch_children()) and bool(store.progress()))
    [child] = fetch_children()
    await store.close()
    with pytest.raises(ModelError) as e:
        await task
    assert e.value.reason == "DownloadFailed"
    assert not psutil.pid_exists(child.pid)


def test_the_agent_side_does_not_import_huggingface_hub() -> None:
    code = "import sys, vnode.provider.models; sys.exit('huggingface_hub' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[3]).returncode == 0


async def test_stand_in_hub_speaks_huggingface_hub(hub: HubServer, tmp_path: Path, monkeypatch) -> None:
    """hf_hub_download itself works against HubServer, and (as TEST_CLUSTER.md notes) stores a
    corrupted body without complaint: the reason the child verifies sha256 itself."""
    from huggingface_hub import HfApi, hf_hub_download

    path = await asyncio.to_thread(hf_hub_download, REPO, "tiny-Q8_0.gguf", cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    assert Path(path).read_bytes() == FILES[REPO]["tiny-Q8_0.gguf"]
    tree = await asyncio.to_thread(lambda: list(HfApi(endpoint=hub.url).list_repo_tree(REPO, recursive=True, token=False)))
    assert {f.path: f.lfs.sha256 for f in tree}["tiny-Q8_0.gguf"] == hub.sha256(REPO, "tiny-Q8_0.gguf")
    hub.corrupt.add("tiny-Q4_K_S.gguf")
    bad = await asyncio.to_thread(hf_hub_download, REPO, "tiny-Q4_K_S.gguf", cache_dir=tmp_path / "c", endpoint=hub.url, token=False)
    assert Path(bad).read_bytes() != FILES[REPO]["tiny-Q4_K_S.gguf"]


def test_disk_usage_is_the_store_on_its_filesystem(tmp_path):
    """imageFs of /stats/summary: what the store holds (partial downloads too), on its filesystem."""
    s = ModelStore(tmp_path / "models")
    s.root.mkdir(parents=True)
    (s.root / "a.gguf").write_bytes(b"GGUF" + b"\0" * 200_000)
    (s.root / ".partial").mkdir()
    (s.root / ".partial" / "b.gguf.part").write_bytes(b"\0" * 100_000)
    got = s.disk_usage()
    assert got.used.bytes >= 300_000 and got.used.inodes == 4  # root, a.gguf, .partial, the part
    assert got.filesystem.capacity_bytes > got.used.bytes
