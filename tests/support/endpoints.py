"""A client that sends completions to the ready endpoints of a Service, following its
EndpointSlices as a proxy or service mesh does, and records every outcome: what the drain
and autoscaling tests and benchmarks count failed requests with.

There is no kube-proxy in the local cluster, so the client reads the slices itself (every
0.2 s, with the admin credentials) and talks to each endpoint's address directly.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path


def complete(base: str, *, max_tokens: int, timeout: float = 120) -> dict:
    body = {"prompt": "The capital of France is", "max_tokens": max_tokens}
    req = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class EndpointClient:
    """Sends completions to the ready endpoints of a Service, re-reading its EndpointSlices
    every 0.2 s as a service mesh or kube-proxy would; counts every outcome."""

    def __init__(self, cluster, ns: str, service_name: str, *, workers: int = 2, max_tokens: int = 16) -> None:
        """`cluster` is a LocalCluster that is up."""
        pki = Path(cluster.state.directory) / "pki"
        self._ssl = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._ssl.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._url = (f"{cluster.state.server}/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices"
                     f"?labelSelector=kubernetes.io/service-name%3D{service_name}")
        self.endpoints: list[tuple[str, int]] = []
        self.ok: Counter[str] = Counter()
        self.failed: list[str] = []
        self.timeline: list[str] = []  # endpoint changes and failures, for a failure's message
        self._t0 = time.monotonic()
        self.max_tokens = max_tokens
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, daemon=True)]
        self._threads += [threading.Thread(target=self._send, args=(i,), daemon=True) for i in range(workers)]

    def __enter__(self) -> EndpointClient:
        self._refresh()
        for t in self._threads:
            t.start()
        return self

    @property
    def served(self) -> int:
        return sum(self.ok.values())

    def mark(self, what: str) -> None:
        """Put an event (a drain starting) on the timeline a failure is reported with."""
        self.timeline.append(f"{time.monotonic() - self._t0:.2f}s {what}")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=90)

    def _refresh(self) -> None:
        with urllib.request.urlopen(self._url, context=self._ssl, timeout=5) as resp:
            slices = json.loads(resp.read())["items"]
        endpoints = sorted(
            (addr, port["port"]) for s in slices for e in s.get("endpoints") or []
            if (e.get("conditions") or {}).get("ready") for addr in e["addresses"] for port in s.get("ports") or []
        )
        if endpoints != self.endpoints:
            self.timeline.append(f"{time.monotonic() - self._t0:.2f}s endpoints {endpoints}")
        self.endpoints = endpoints

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self._refresh()
            except (urllib.error.URLError, OSError, ValueError):
                pass  # keep the last view, as a proxy does

    def _send(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            targets = list(self.endpoints)
            if not targets:
                time.sleep(0.05)
                continue
            ip, port = targets[n % len(targets)]
            n += 1
            sent = time.monotonic() - self._t0
            try:
                answer = complete(f"http://{ip}:{port}", max_tokens=self.max_tokens)
                assert answer["usage"]["completion_tokens"] > 0
                self.ok[ip] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                self.failed.append(f"{ip}:{port}: {exc!r}")
                self.timeline.append(f"{sent:.2f}s-{time.monotonic() - self._t0:.2f}s failed {ip}: {exc!r}")
