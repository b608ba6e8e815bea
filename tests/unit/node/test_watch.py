"""The reflector (node/watch.py) against a stand-in API server: it lists once, resumes every
watch from the last resourceVersion (bookmarks included), and lists again only on 410 Gone."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.fakeapi import FakeApi, kubeconfig
from vnode.kubeclient import KubeClient, load_kubeconfig
from vnode.node.watch import Reflector


def pod(name: str, rv: str) -> dict:
    return {"metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": rv}}


def bookmark(rv: str) -> dict:
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": rv}}}


@pytest.fixture
async def api(tmp_path):
    async with FakeApi(tmp_path / "api") as fake:
        pair = fake.client_cert("node", cn="system:node:mac", orgs=("system:nodes",))
        client = KubeClient(load_kubeconfig(kubeconfig(
            tmp_path / "k.yaml", server=fake.url, ca=fake.ca_file,
            user={"client-certificate": str(pair.cert), "client-key": str(pair.key)})))
        try:
            yield fake, client
        finally:
            await client.close()


def reflector(client: KubeClient, seen: list) -> Reflector:
    async def listed(items: list[dict]) -> None:
        seen.append(("LIST", [p["metadata"]["name"] for p in items]))

    def event(kind: str, obj: dict) -> None:
        seen.append((kind, obj["metadata"]["name"]))

    return Reflector(client, "/api/v1/pods", selector="spec.nodeName=mac", what="pods", on_list=listed, on_event=event,
                     watch_seconds=lambda: 300)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def watches(fake: FakeApi) -> list[dict]:
    return [q for q in fake.pod_requests if q.get("watch") == "true"]


async def test_an_ended_watch_resumes_from_the_last_version_without_listing(api):
    fake, client = api
    fake.pods_list = {"metadata": {"resourceVersion": "10"}, "items": [pod("a", "9")]}
    fake.pod_watches = [
        [{"type": "MODIFIED", "object": pod("a", "11")}, bookmark("15")],  # then the server's timeout ends it
        [{"type": "ADDED", "object": pod("b", "16")}],
    ]  # a third watch stays open
    seen: list = []
    r = reflector(client, seen)
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: len(watches(fake)) == 3)
    finally:
        task.cancel()
    lists = [q for q in fake.pod_requests if q.get("watch") != "true"]
    assert len(lists) == 1 and lists[0]["fieldSelector"] == "spec.nodeName=mac"
    assert [w["resourceVersion"] for w in watches(fake)] == ["10", "15", "16"]
    assert all(w["allowWatchBookmarks"] == "true" for w in watches(fake))
    assert seen == [("LIST", ["a"]), ("MODIFIED", "a"), ("ADDED", "b")]  # bookmarks are not events
    assert (r.lists, r.watches) == (1, 3)


@pytest.mark.parametrize("gone", [
    [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}}],
    410,  # refused before the stream starts
], ids=["error-event", "http-status"])
async def test_only_410_gone_makes_it_list_again(api, gone):
    fake, client = api
    fake.pods_list = [{"metadata": {"resourceVersion": "10"}, "items": [pod("a", "9")]},
                      {"metadata": {"resourceVersion": "40"}, "items": [pod("b", "39")]}]
    fake.pod_watches = [gone]
    seen: list = []
    r = reflector(client, seen)
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: len(watches(fake)) == 2)
    finally:
        task.cancel()
    assert r.lists == 2 and seen == [("LIST", ["a"]), ("LIST", ["b"])]
    assert [w["resourceVersion"] for w in watches(fake)] == ["10", "40"]


async def test_a_failing_watch_is_retried_from_the_same_version_and_reports_how_long(api, monkeypatch):
    fake, client = api
    fake.pods_list = {"metadata": {"resourceVersion": "10"}, "items": []}
    fake.pod_watches = [[bookmark("12")], 500, 500]
    monkeypatch.setattr("vnode.node.watch.Backoff.next_delay", lambda self: 0.2)
    seen: list = []
    r = reflector(client, seen)
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: len(watches(fake)) == 2)
        await asyncio.sleep(0.05)
        assert r.failing_for() > 0
        await until(lambda: len(watches(fake)) == 4)  # the fourth is held open: the watch works again
        await until(lambda: r.failing_for() == 0)
    finally:
        task.cancel()
    assert r.lists == 1, "a server error is no reason to list again"
    assert [w["resourceVersion"] for w in watches(fake)] == ["10", "12", "12", "12"]


async def test_restart_drops_a_hanging_watch_and_resumes_from_the_same_version(api):
    fake, client = api
    fake.pods_list = {"metadata": {"resourceVersion": "10"}, "items": []}
    fake.pod_watches = [None, [{"type": "MODIFIED", "object": pod("a", "20")}]]  # the first hangs (a dead connection)
    seen: list = []
    r = reflector(client, seen)
    task = asyncio.create_task(r.run())
    try:
        await until(lambda: len(watches(fake)) == 1)
        await asyncio.sleep(0.1)
        r.restart()
        await until(lambda: ("MODIFIED", "a") in seen)
    finally:
        task.cancel()
    assert r.lists == 1 and [w["resourceVersion"] for w in watches(fake)][:2] == ["10", "10"]
    assert r.failing_for() == 0


async def test_a_watch_that_ends_at_once_is_backed_off_not_spun(api, monkeypatch):
    fake, client = api
    fake.pods_list = {"metadata": {"resourceVersion": "10"}, "items": []}
    fake.pod_watches = [[] for _ in range(50)]  # every watch ends at once, empty
    monkeypatch.setattr("vnode.node.watch.Backoff.next_delay", lambda self: 0.2)
    r = reflector(client, [])
    task = asyncio.create_task(r.run())
    await asyncio.sleep(1.0)
    task.cancel()
    assert r.lists == 1 and len(watches(fake)) <= 6 and r.failing_for() > 0
