"""Client-certificate rotation: the pair store, the kubeconfig pointed at it, and a renewal
through a CSR that the live client switches to, against a stand-in API server."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.support.fakeapi import FakeApi, kubeconfig
from vnode.kubeclient import KubeClient, load_kubeconfig
from vnode.node import certs, client_certs

NODE = "mac-1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_writes_owner_only_pairs_and_switches_the_symlink(tmp_path: Path) -> None:
    store = client_certs.PairStore(tmp_path / "pki")
    first = store.update(b"CERT1\n", b"KEY1\n")
    assert store.current.is_symlink() and store.current.read_bytes() == b"CERT1\nKEY1\n" and _mode(first) == 0o600
    second = store.update(b"CERT2", b"KEY2\n")
    third = store.update(b"CERT3", b"KEY3\n")
    assert os.readlink(store.current) == third.name and store.current.read_bytes() == b"CERT3\nKEY3\n"
    assert second.exists() and not first.exists()  # the previous pair stays, older ones go
    assert not list((tmp_path / "pki").glob(".*.tmp"))


def test_the_kubeconfig_is_pointed_at_the_current_pair(tmp_path: Path) -> None:
    cfg = kubeconfig(tmp_path / "k.yaml", server="https://x:1", user={"client-certificate-data": "QQ==", "client-key-data": "QQ=="})
    cfg.chmod(0o644)
    pair = tmp_path / "pki" / "kubelet-client-current.pem"
    client_certs.point_kubeconfig(cfg, user="u", pair=pair)
    user = yaml.safe_load(cfg.read_text())["users"][0]["user"]
    assert user == {"client-certificate": str(pair), "client-key": str(pair)}
    assert _mode(cfg) == 0o600


async def test_what_is_not_renewed_says_why(tmp_path: Path) -> None:
    async with FakeApi(tmp_path / "api") as api:
        admin = api.client_cert("admin", cn="kubernetes-admin", orgs=("system:masters",))
        creds = load_kubeconfig(kubeconfig(tmp_path / "a.yaml", server=api.url, ca=api.ca_file,
                                           user={"client-certificate": str(admin.cert), "client-key": str(admin.key)}))
        assert "is for kubernetes-admin (system:masters), not system:node:mac-1" in client_certs.not_rotatable(creds, NODE)
        token = load_kubeconfig(kubeconfig(tmp_path / "t.yaml", server=api.url, ca=api.ca_file, user={"token": "x"}))
        assert "no client certificate" in client_certs.not_rotatable(token, NODE)
        node = api.client_cert("node", cn=f"system:node:{NODE}", orgs=("system:nodes",))
        mine = load_kubeconfig(kubeconfig(tmp_path / "n.yaml", server=api.url, ca=api.ca_file,
                                          user={"client-certificate": str(node.cert), "client-key": str(node.key)}))
        assert client_certs.not_rotatable(mine, NODE) is None
        assert client_certs.store_for(mine, tmp_path / "state") == client_certs.PairStore(tmp_path / "state")


async def test_rotation_renews_through_a_csr_and_the_live_client_switches(tmp_path: Path, monkeypatch, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeApi(tmp_path / "api") as api:
        now = dt.datetime.now(dt.timezone.utc)
        node = api.client_cert("node", cn=f"system:node:{NODE}", orgs=("system:nodes",),
                               not_before=now - dt.timedelta(minutes=1), not_after=now + dt.timedelta(minutes=10))
        cfg = kubeconfig(tmp_path / "node.yaml", server=api.url, ca=api.ca_file,
                         user={"client-certificate": str(node.cert), "client-key": str(node.key)})
        client = KubeClient(load_kubeconfig(cfg))
        deadlines = iter([0.0])  # the first certificate is due now, the renewed one at 90 % of its hour
        monkeypatch.setattr(certs, "rotation_deadline", lambda start, end, rng=None: start + (end - start) * next(deadlines, 0.9))
        old = (await client.get("/api/v1/whoami"))["serial"]
        watch = client.watch("/api/v1/stream")
        await watch.__anext__()  # a watch under way across the renewal
        task = asyncio.create_task(client_certs.keep_fresh(client, node_name=NODE, cert_dir=tmp_path / "state" / "pki", poll=0.01))
        try:
            for _ in range(500):
                if client.credentials.client_cert != node.cert.read_bytes():
                    break
                await asyncio.sleep(0.01)
            csr = next(iter(api.csrs.values()))
            assert csr["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
            assert csr["spec"]["usages"] == ["digital signature", "client auth"]
            assert csr["spec"]["username"] == f"system:node:{NODE}"  # asked for with the current certificate
            new = (await client.get("/api/v1/whoami"))
            assert new["cn"] == f"system:node:{NODE}" and new["serial"] != old
            current = tmp_path / "state" / "pki" / "kubelet-client-current.pem"
            assert current.is_symlink() and _mode(current.resolve()) == 0o600
            assert x509.load_pem_x509_certificate(current.read_bytes()).serial_number == new["serial"]
            user = yaml.safe_load(cfg.read_text())["users"][0]["user"]
            assert user == {"client-certificate": str(current), "client-key": str(current)}  # a restart uses it too
            assert load_kubeconfig(cfg).client_cert == current.read_bytes()
            api.release_watch.set()
            assert (await watch.__anext__())["object"]["serial"] == old  # the old connection's watch went on
            assert "client certificate renewed" in caplog.text and "reloaded the credentials" in caplog.text
            assert not task.done()  # waiting for the next renewal
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()


async def test_rotation_is_off_for_an_admin_certificate(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    async with FakeApi(tmp_path / "api") as api:
        admin = api.client_cert("admin", cn="kubernetes-admin", orgs=("system:masters",))
        client = KubeClient(load_kubeconfig(kubeconfig(tmp_path / "a.yaml", server=api.url, ca=api.ca_file,
                                                       user={"client-certificate": str(admin.cert), "client-key": str(admin.key)})))
        try:
            await asyncio.wait_for(client_certs.keep_fresh(client, node_name=NODE, cert_dir=tmp_path), 5)
        finally:
            await client.close()
        assert "client certificate rotation off: the client certificate is for kubernetes-admin" in caplog.text
        assert not api.csrs


@pytest.mark.parametrize("answer", ["denied", "wrong key"])
async def test_a_failed_renewal_keeps_the_certificate_and_retries(tmp_path: Path, monkeypatch, caplog, answer) -> None:
    async with FakeApi(tmp_path / "api") as api:
        node = api.client_cert("node", cn=f"system:node:{NODE}", orgs=("system:nodes",))
        cfg = kubeconfig(tmp_path / "node.yaml", server=api.url, ca=api.ca_file,
                         user={"client-certificate": str(node.cert), "client-key": str(node.key)})
        client = KubeClient(load_kubeconfig(cfg))
        monkeypatch.setattr(certs, "rotation_deadline", lambda start, end, rng=None: start)
        attempts = 0

        async def refused(*args, **kwargs) -> bytes:
            nonlocal attempts
            attempts += 1
            if answer == "denied":
                raise certs.CertificateDenied("client certificate request x was denied: no")
            raise certs.CertificateMismatch("the client certificate issued for CSR x is not for the key vnode made")

        monkeypatch.setattr(certs, "request_certificate", refused)
        task = asyncio.create_task(client_certs.keep_fresh(client, node_name=NODE, cert_dir=tmp_path / "pki", retry=0.01))
        try:
            for _ in range(300):
                if attempts >= 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
        assert attempts >= 2 and client.credentials.client_cert == node.cert.read_bytes()
        assert "client certificate not renewed" in caplog.text
        assert yaml.safe_load(cfg.read_text())["users"][0]["user"]["client-certificate"] == str(node.cert)
