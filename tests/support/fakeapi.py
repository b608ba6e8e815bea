"""A stand-in API server for unit tests of the client's credentials: real HTTPS on 127.0.0.1,
client certificates verified against a test CA, bearer tokens checked, and the few
endpoints the credential code calls (CSRs signed at once, SelfSubjectReview, a watch that
streams until released). It records who each request came as.

For the watch-resume tests it also lists and watches /api/v1/pods: `pods_list` is what a
list returns (a list of them: one per list request), `pod_watches` scripts each watch request in turn (its events, then the end of
the stream; or an HTTP status to answer instead), and `pod_requests` records every query.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from vnode.cluster import pki

CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"


@dataclass
class Seen:
    path: str
    cn: str | None
    serial: int | None
    token: str | None


@dataclass
class FakeApi:
    directory: Path
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ("127.0.0.1",)
    tokens: set[str] | None = None  # accepted bearer tokens; None: any (or none)
    rejected_serials: set[int] = field(default_factory=set)  # client certificates answered 401
    signing: dt.timedelta = dt.timedelta(hours=1)
    seen: list[Seen] = field(default_factory=list)
    csrs: dict[str, dict] = field(default_factory=dict)
    release_watch: asyncio.Event = field(default_factory=asyncio.Event)
    pods_list: dict = field(default_factory=lambda: {"kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": []})
    pod_watches: list = field(default_factory=list)  # per watch request: a list of events, or an int HTTP status
    pod_requests: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = pki.Authority.create(self.directory, "ca", "fake-ca")
        self.serving = self.ca.issue(self.directory, "apiserver", common_name="kube-apiserver", server=True,
                                     dns=self.dns, ips=self.ips)
        self.url = ""

    @property
    def ca_file(self) -> Path:
        return self.ca.pair.cert

    def client_cert(self, stem: str, *, cn: str, orgs: tuple[str, ...] = (), **validity) -> pki.Pair:
        return self.ca.issue(self.directory, stem, common_name=cn, orgs=orgs, client=True, **validity)

    async def __aenter__(self) -> FakeApi:
        app = web.Application()
        app.router.add_get("/api/v1/whoami", self._whoami)
        app.router.add_get("/api/v1/stream", self._stream)
        app.router.add_get("/api/v1/pods", self._pods)
        app.router.add_post(CSRS, self._create_csr)
        app.router.add_get(CSRS + "/{name}", self._get_csr)
        app.router.add_post("/apis/authentication.k8s.io/v1/selfsubjectreviews", self._review)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.serving.cert, self.serving.key)
        ctx.load_verify_locations(self.ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release_watch.set()
        await self._runner.cleanup()

    # -- who is asking ---------------------------------------------------------------------
    def _who(self, request: web.Request) -> tuple[Seen, web.Response | None]:
        der = request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True) if request.transport else None
        cn = serial = None
        if der:
            cert = x509.load_der_x509_certificate(der)
            cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            serial = cert.serial_number
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        seen = Seen(request.path, cn, serial, token)
        self.seen.append(seen)
        if (serial is not None and serial in self.rejected_serials) or (
                self.tokens is not None and token is not None and token not in self.tokens):
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Unauthorized",
                    "message": "Unauthorized", "code": 401}
            return seen, web.json_response(body, status=401)
        return seen, None

    async def _whoami(self, request: web.Request) -> web.Response:
        seen, refused = self._who(request)
        return refused or web.json_response({"cn": seen.cn, "serial": seen.serial, "token": seen.token})

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        seen, refused = self._who(request)
        if refused:
            return refused
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(json.dumps({"type": "ADDED", "object": {"serial": seen.serial}}).encode() + b"\n")
        await self.release_watch.wait()
        await resp.write(json.dumps({"type": "MODIFIED", "object": {"serial": seen.serial}}).encode() + b"\n")
        await resp.write_eof()
        return resp

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        query = dict(request.query)
        self.pod_requests.append(query)
        if query.get("watch") != "true":
            if isinstance(self.pods_list, list):  # one listing per list request, the last one repeated
                return web.json_response(self.pods_list.pop(0) if len(self.pods_list) > 1 else self.pods_list[0])
            return web.json_response(self.pods_list)
        script = self.pod_watches.pop(0) if self.pod_watches else None
        if script is None:  # None or nothing scripted: hold the watch open until the test ends
            resp = web.StreamResponse()
            await resp.prepare(request)
            await self.release_watch.wait()
            return resp
        if isinstance(script, int):
            reason = {410: "Expired", 500: "InternalError"}.get(script, "Error")
            return web.json_response({"kind": "Status", "code": script, "reason": reason, "message": f"scripted {script}"},
                                     status=script)
        resp = web.StreamResponse()
        await resp.prepare(request)
        for event in script:
            await resp.write(json.dumps(event).encode() + b"\n")
        await resp.write_eof()
        return resp

    # -- CSRs: approved and signed as soon as asked for ---------------------------------------
    async def _create_csr(self, request: web.Request) -> web.Response:
        seen, refused = self._who(request)
        if refused:
            return refused
        body = await request.json()
        body["spec"]["username"] = seen.cn or ""
        self.csrs[body["metadata"]["name"]] = body
        return web.json_response(body, status=201)

    async def _get_csr(self, request: web.Request) -> web.Response:
        _, refused = self._who(request)
        if refused:
            return refused
        csr = self.csrs.get(request.match_info["name"])
        if csr is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound", "message": "not found"}, status=404)
        if "status" not in csr:
            req = x509.load_pem_x509_csr(base64.b64decode(csr["spec"]["request"]))
            now = dt.datetime.now(dt.timezone.utc)
            cert = (
                x509.CertificateBuilder().subject_name(req.subject).issuer_name(self.ca.cert.subject)
                .public_key(req.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + self.signing)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.ca.key, hashes.SHA256())
            )
            pem = cert.public_bytes(serialization.Encoding.PEM)
            csr["status"] = {"conditions": [{"type": "Approved", "status": "True"}],
                             "certificate": base64.b64encode(pem).decode()}
        return web.json_response(csr)

    async def _review(self, request: web.Request) -> web.Response:
        seen, refused = self._who(request)
        if refused:
            return refused
        der = request.transport.get_extra_info("ssl_object").getpeercert(binary_form=True) if request.transport else None
        groups = []
        if der:
            cert = x509.load_der_x509_certificate(der)
            groups = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
        return web.json_response({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
                                  "status": {"userInfo": {"username": seen.cn or f"token:{seen.token}",
                                                          "groups": [*groups, "system:authenticated"]}}}, status=201)


def kubeconfig(path: Path, *, server: str, ca: Path | None = None, user: dict, cluster: dict | None = None) -> Path:
    """A one-context kubeconfig at `path`."""
    import yaml

    entry = {"server": server, **({"certificate-authority": str(ca)} if ca else {}), **(cluster or {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": entry}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }))
    return path
