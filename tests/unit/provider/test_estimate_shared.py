"""Pods that arrive together share one estimate child (bench/scale.py: 100 pods of one model
made 100 Python children, 13 CPU-s per 10 pods, before estimates were shared)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vnode.pods import worker as worker_mod
from vnode.provider.estimate import estimate_file, estimate_in_subprocess, sidecar_path
from vnode.provider.tinymodel import write_tiny_model


@pytest.fixture
def spawns(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    seen: list[tuple] = []
    real = asyncio.create_subprocess_exec

    async def counting(*args, **kwargs):
        seen.append(args)
        return await real(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", counting)
    return seen


async def test_concurrent_estimates_of_one_model_spawn_one_child(tmp_path: Path, spawns: list[tuple]) -> None:
    path = write_tiny_model(tmp_path / "tiny.gguf")
    results = await asyncio.gather(*(estimate_in_subprocess(path, ctx_size=256, parallel=1) for _ in range(8)))
    assert len(spawns) == 1
    assert all(r == estimate_file(path, ctx_size=256) for r in results)
    assert sidecar_path(path).exists()  # written once, for the next pod
    await estimate_in_subprocess(path, ctx_size=256, parallel=1)
    assert len(spawns) == 1
    await estimate_in_subprocess(path, ctx_size=512, parallel=1)  # other parameters: their own child
    assert len(spawns) == 2


async def test_a_cancelled_caller_leaves_the_shared_estimate_to_the_others(tmp_path: Path, spawns: list[tuple]) -> None:
    path = write_tiny_model(tmp_path / "tiny.gguf")
    first = asyncio.ensure_future(estimate_in_subprocess(path, ctx_size=256, parallel=1))
    second = asyncio.ensure_future(estimate_in_subprocess(path, ctx_size=256, parallel=1))
    await asyncio.sleep(0.05)
    first.cancel()  # its pod was deleted meanwhile
    assert (await second) == estimate_file(path, ctx_size=256)
    assert first.cancelled() and len(spawns) == 1


async def test_concurrent_header_estimates_share_one_fetch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The worker's admission from the GGUF header: one header fetch for pods of one model."""
    fetched: list[object] = []
    head = write_tiny_model(tmp_path / "head.gguf")

    class Models:
        async def header(self, source, *, token=None):
            fetched.append(source)
            await asyncio.sleep(0.05)
            copy = tmp_path / f"head-{len(fetched)}.gguf"
            copy.write_bytes(head.read_bytes())
            return copy, head.stat().st_size

    from vnode.provider.spec import LaunchSpec, ModelSource

    launch = LaunchSpec.model_construct(model=ModelSource(kind="hf", repo="org/tiny-GGUF", quant="Q8_0"), hf_token=None,
                                        ctx_size=256, parallel=1, cache_type_k="f16", cache_type_v="f16", kv_unified=True)
    reserved: list[int] = []

    class Budget:
        def reserve(self, key, total, *, what):
            reserved.append(total)

    class Runner:
        pass

    runners = []
    for i in range(6):
        r = Runner()
        r.ctx = type("Ctx", (), {"models": Models(), "budget": Budget()})()
        r.w = type("W", (), {"uid": f"uid-{i}"})()
        r.c = type("C", (), {"name": "server"})()
        runners.append(r)
    await asyncio.gather(*(worker_mod.ContainerRunner._admit_from_header(r, launch) for r in runners))
    assert len(fetched) == 1
    assert len(reserved) == 6 and len(set(reserved)) == 1
    assert not worker_mod._header_estimates  # nothing left behind
