"""The identity check: a node's own credentials pass, anyone else's are a warning, or with
--require-node-identity a refusal."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.fakeapi import FakeApi, kubeconfig
from vnode.kubeclient import ApiError, KubeClient, load_kubeconfig
from vnode.node import identity

NODE = "mac-1"


async def _client(api: FakeApi, tmp_path: Path, *, cn: str, orgs: tuple[str, ...]) -> KubeClient:
    pair = api.client_cert(cn.replace(":", "-"), cn=cn, orgs=orgs)
    return KubeClient(load_kubeconfig(kubeconfig(tmp_path / f"{pair.cert.stem}.yaml", server=api.url, ca=api.ca_file,
                                                 user={"client-certificate": str(pair.cert), "client-key": str(pair.key)})))


async def test_the_node_itself_passes(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeApi(tmp_path / "api") as api:
        client = await _client(api, tmp_path, cn=f"system:node:{NODE}", orgs=("system:nodes",))
        try:
            await identity.check(client, node_name=NODE, kubeconfig="node.yaml", require=True)
        finally:
            await client.close()
    assert f"authenticated as system:node:{NODE}" in caplog.text and "WARNING" not in caplog.text


@pytest.mark.parametrize(("cn", "orgs"), [("kubernetes-admin", ("system:masters",)), ("system:node:other", ("system:nodes",)),
                                         (f"system:node:{NODE}", ())])
async def test_someone_else_is_a_warning_or_with_require_a_refusal(tmp_path: Path, caplog, cn, orgs) -> None:
    async with FakeApi(tmp_path / "api") as api:
        client = await _client(api, tmp_path, cn=cn, orgs=orgs)
        try:
            await identity.check(client, node_name=NODE, kubeconfig="admin.yaml", require=False)
            with pytest.raises(identity.IdentityRefused) as refused:
                await identity.check(client, node_name=NODE, kubeconfig="admin.yaml", require=True)
        finally:
            await client.close()
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING).message
    assert f"the kubeconfig admin.yaml authenticates as {cn} (groups: " in warning
    assert f"not as this node's identity system:node:{NODE} in group system:nodes" in warning
    assert "--require-node-identity refuses to start" in warning
    assert str(refused.value).startswith("refusing to start (--require-node-identity): the kubeconfig admin.yaml")


class _Api:
    server = "https://api.example:6443"

    def __init__(self, *answers) -> None:
        self.answers = list(answers)

    async def create(self, path: str, body: dict) -> dict:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


async def test_an_api_server_away_is_waited_for_and_one_without_reviews_is_named(monkeypatch, caplog) -> None:
    monkeypatch.setattr(identity, "Backoff", lambda cap: type("B", (), {"next_delay": lambda self: 0.0})())
    node = {"status": {"userInfo": {"username": f"system:node:{NODE}", "groups": ["system:nodes"]}}}
    api = _Api(ApiError(503, "ServiceUnavailable", "starting"), OSError("refused"), node)
    await identity.check(api, node_name=NODE, kubeconfig="k", require=True)  # type: ignore[arg-type]
    assert not api.answers and "identity check (SelfSubjectReview) failed" in caplog.text
    old = _Api(ApiError(404, "NotFound", "the server could not find the requested resource"))
    await identity.check(old, node_name=NODE, kubeconfig="k", require=False)  # type: ignore[arg-type]
    assert "no authentication.k8s.io/v1 SelfSubjectReview" in caplog.text
    with pytest.raises(identity.IdentityRefused, match="cannot check who the kubeconfig k authenticates as"):
        await identity.check(_Api(ApiError(404, "NotFound", "")), node_name=NODE, kubeconfig="k", require=True)  # type: ignore[arg-type]
