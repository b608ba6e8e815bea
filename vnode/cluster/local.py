"""A local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Flags are those of a production cluster (Node,RBAC authorization, NodeRestriction, the
API server verifying the kubelet's serving certificate, bootstrap tokens, cluster-info and
the TLS-bootstrap RBAC as kubeadm sets them up), so what passes here passes on a real
cluster. The "Mac" is a network namespace (netns.py); the control plane listens on the root
end of its veth pair. Everything started is recorded in `state.json` and stopped by pid in
`down()`, also after a failed `up()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml
from cryptography import x509

from vnode.cluster import bootstrap_tokens, metrics_server, pki, processes
from vnode.cluster import netns as netns_mod
from vnode.cluster.build import Binaries, ensure_control_plane
from vnode.cluster.processes import Proc
from vnode.files import replace_private
from vnode.join.discovery import ca_cert_hash
from vnode.provider import supervisor

SERVICE_CIDR = "198.19.0.0/16"
SERVICE_IP = "198.19.0.1"
NODE_MONITOR_GRACE = "20s"
MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


class ClusterError(RuntimeError):
    pass


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def write_kubeconfig(path: Path, *, server: str, ca: Path, cert: Path, key: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "vnode-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": user, "context": {"cluster": "vnode-local", "user": user}}],
        "current-context": user,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_private(path, yaml.safe_dump(config, sort_keys=False).encode())
    return path


@dataclass
class ClusterState:
    """What `down()` and later commands need; persisted as state.json in the cluster dir."""

    directory: str
    tag: str
    server: str
    apiserver_port: int
    netns: dict
    procs: list[dict]
    node_name: str
    kubectl: str
    admin_kubeconfig: str
    hosts: dict[str, dict] = field(default_factory=dict)  # node name -> its own "Mac" (netns), beyond the first

    def save(self) -> None:
        Path(self.directory, "state.json").write_text(json.dumps(self.__dict__, indent=2))

    @classmethod
    def load(cls, directory: Path) -> ClusterState | None:
        path = directory / "state.json"
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))

    @property
    def host(self) -> netns_mod.HostNetns:
        return netns_mod.HostNetns(**self.netns)

    def host_for(self, node_name: str | None) -> netns_mod.HostNetns:
        """The "Mac" a node runs on: its own namespace if it was given one, else the first."""
        extra = self.hosts.get(node_name or self.node_name)
        return netns_mod.HostNetns(**extra) if extra else self.host

    def node_kubeconfig(self, node_name: str | None = None) -> Path:
        return Path(self.directory, "kubeconfig", f"node-{node_name or self.node_name}.yaml")


class LocalCluster:
    """Start, use and stop one local control plane rooted at `directory`."""

    def __init__(self, directory: Path, *, node_name: str = "mac", metrics: bool = True,
                 signing_duration: str | None = None, apiserver_args: tuple[str, ...] = ()) -> None:
        self.dir = directory.resolve()
        self.apiserver_args = apiserver_args  # extra kube-apiserver flags (a benchmark's audit log)
        self.node_name = node_name
        self.metrics = metrics
        self.signing_duration = signing_duration  # --cluster-signing-duration (e.g. "3m"); None: the default, a year
        self.state: ClusterState | None = ClusterState.load(self.dir)

    # -- lifecycle -----------------------------------------------------------------------
    def up(self, *, binaries: Binaries | None = None, timeout: float = 120.0) -> ClusterState:
        if self.state and self.running():
            return self.state
        if self.state:
            self.down()
        netns_mod.check_available()
        bins = binaries or ensure_control_plane()
        self.dir.mkdir(parents=True, exist_ok=True)
        tag = secrets.token_hex(3)
        host = netns_mod.create(tag)
        self.state = ClusterState(
            directory=str(self.dir), tag=tag, server="", apiserver_port=0, netns=host.to_dict(), procs=[],
            node_name=self.node_name, kubectl=str(bins.kubectl), admin_kubeconfig=str(self.dir / "kubeconfig" / "admin.yaml"),
        )
        self.state.save()
        try:
            self._start(bins, host, timeout=timeout)
        except BaseException:
            self.down()
            raise
        return self.state

    def running(self) -> bool:
        return bool(self.state and self.state.procs and all(Proc.from_dict(p).alive() for p in self.state.procs if p["name"] in CORE))

    def down(self) -> None:
        """Stop every process recorded (agents first), remove the namespace, keep logs."""
        state = self.state or ClusterState.load(self.dir)
        if state is None:
            return
        for record in reversed(state.procs):
            processes.stop(Proc.from_dict(record))
        self.stop_pod_servers()
        for extra in state.hosts.values():
            netns_mod.destroy(netns_mod.HostNetns(**extra))
        netns_mod.destroy(state.host)
        state.procs = []
        state.save()
        (self.dir / "state.json").unlink(missing_ok=True)
        self.state = None

    def stop_pod_servers(self, node: str = "*") -> None:
        """Stop the pod servers of `node`'s agent (all agents by default) from the agents' own
        records. Servers outlive their agent on purpose (an agent restart must not stop
        them), so a teardown stops them itself; a test that removes an agent's state
        directory calls this first."""
        for record in sorted(self.dir.glob(f"agents/{node}/pods/*/containers/*/state.json")):
            try:
                data = json.loads(record.read_text())
                server = Proc(name=f"server {data['pod_name']}", pid=int(data["shim_pid"]),
                              create_time=float(data["shim_start"]), log=str(data["log_path"]), cmd=[])
            except (OSError, ValueError, KeyError):
                continue
            processes.stop(server)
            # A server whose shim died is not stopped with it: found through the shim's pid file.
            with contextlib.suppress(TypeError, psutil.Error):
                orphan = supervisor.server_process(supervisor.Instance(**data))
                if orphan is not None:
                    processes.stop(Proc(name=f"server {data['pod_name']}", pid=orphan.pid, create_time=orphan.create_time(),
                                        log=str(data["log_path"]), cmd=[]))

    # -- the pieces ----------------------------------------------------------------------
    def _start(self, bins: Binaries, host: netns_mod.HostNetns, *, timeout: float) -> None:
        assert self.state is not None
        pki_dir = self.dir / "pki"
        certs = pki.make_cluster_pki(pki_dir, apiserver_ips=(host.root_ip,), service_ip=SERVICE_IP, metrics_ips=(host.root_ip,))
        node_client, _ = pki.node_credentials(pki_dir, node_name=self.node_name, node_ip=host.ns_ip)
        logs = self.dir / "logs"
        etcd_port, peer_port = free_port("127.0.0.1"), free_port("127.0.0.1")
        api_port = free_port(host.root_ip)
        server = f"https://{host.root_ip}:{api_port}"
        self.state.server, self.state.apiserver_port = server, api_port

        kcfg = self.dir / "kubeconfig"
        admin = write_kubeconfig(kcfg / "admin.yaml", server=server, ca=certs.ca.cert, cert=certs.admin.cert, key=certs.admin.key, user="kubernetes-admin")
        cm_kcfg = write_kubeconfig(kcfg / "controller-manager.yaml", server=server, ca=certs.ca.cert, cert=certs.controller_manager.cert, key=certs.controller_manager.key, user="system:kube-controller-manager")
        sched_kcfg = write_kubeconfig(kcfg / "scheduler.yaml", server=server, ca=certs.ca.cert, cert=certs.scheduler.cert, key=certs.scheduler.key, user="system:kube-scheduler")
        write_kubeconfig(self.state.node_kubeconfig(), server=server, ca=certs.ca.cert, cert=node_client.cert, key=node_client.key, user=f"system:node:{self.node_name}")

        self._spawn("etcd", [
            str(bins.etcd), "--name", "default", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}", "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}", "--unsafe-no-fsync", "--log-level", "warn",
        ], logs)
        self._spawn("kube-apiserver", [
            str(bins.kube_apiserver),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--bind-address={host.root_ip}", f"--advertise-address={host.root_ip}", f"--secure-port={api_port}",
            f"--tls-cert-file={certs.apiserver.cert}", f"--tls-private-key-file={certs.apiserver.key}",
            f"--client-ca-file={certs.ca.cert}",
            f"--service-account-key-file={certs.service_account.cert}",
            f"--service-account-signing-key-file={certs.service_account.key}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--enable-bootstrap-token-auth=true",
            f"--kubelet-client-certificate={certs.apiserver_kubelet_client.cert}",
            f"--kubelet-client-key={certs.apiserver_kubelet_client.key}",
            f"--kubelet-certificate-authority={certs.ca.cert}",
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--requestheader-client-ca-file={certs.front_proxy_ca.cert}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={certs.front_proxy_client.cert}",
            f"--proxy-client-key-file={certs.front_proxy_client.key}",
            "--enable-aggregator-routing=true",
            "--profiling=false",
            "--v=1",
            *self.apiserver_args,
        ], logs)
        self._wait_ready("kube-apiserver", f"{server}/readyz", certs, timeout=timeout)
        self._spawn("kube-controller-manager", [
            str(bins.kube_controller_manager),
            f"--kubeconfig={cm_kcfg}", f"--authentication-kubeconfig={cm_kcfg}", f"--authorization-kubeconfig={cm_kcfg}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port('127.0.0.1')}",
            "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={certs.service_account.key}",
            f"--root-ca-file={certs.ca.cert}",
            f"--cluster-signing-cert-file={certs.ca.cert}", f"--cluster-signing-key-file={certs.ca.key}",
            "--controllers=*,bootstrapsigner,tokencleaner",
            *([f"--cluster-signing-duration={self.signing_duration}"] if self.signing_duration else []),
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--node-monitor-grace-period={NODE_MONITOR_GRACE}", "--node-monitor-period=2s",
            "--profiling=false", "--v=1",
        ], logs)
        self._spawn("kube-scheduler", [
            str(bins.kube_scheduler),
            f"--kubeconfig={sched_kcfg}", f"--authentication-kubeconfig={sched_kcfg}", f"--authorization-kubeconfig={sched_kcfg}",
            "--bind-address=127.0.0.1", f"--secure-port={free_port('127.0.0.1')}",
            "--leader-elect=false", "--profiling=false", "--v=1",
        ], logs)
        self._wait_for_defaults(bins, admin, timeout=timeout)
        self._apply_node_rbac(bins, admin)
        self._set_up_token_join(certs)
        if self.metrics:
            self._start_metrics_server(bins, host, certs, logs, timeout=timeout)
        self.state.save()

    def _start_metrics_server(self, bins: Binaries, host: netns_mod.HostNetns, certs: pki.ClusterPKI, logs: Path, *, timeout: float) -> None:
        """metrics-server as its release manifest sets it up; the APIService is registered
        only once the process runs, so discovery is never pointed at nothing."""
        assert self.state is not None
        port = free_port(host.root_ip)
        objects = metrics_server.manifests(endpoint_ip=host.root_ip, port=port, ca_bundle=certs.ca.cert.read_bytes())
        apiservice = [o for o in objects if o["kind"] == "APIService"]
        metrics_server.apply(self.kubectl, [o for o in objects if o["kind"] != "APIService"])
        token = metrics_server.wait_token(self.kubectl, timeout=timeout)
        kubeconfig = metrics_server.token_kubeconfig(self.dir / "kubeconfig" / "metrics-server.yaml", server=self.state.server,
                                                     ca=certs.ca.cert, token=token)
        proc = self._spawn("metrics-server", metrics_server.command(
            bins.metrics_server, kubeconfig=kubeconfig, bind=host.root_ip, port=port,
            cert=certs.metrics_server.cert, key=certs.metrics_server.key, ca=certs.ca.cert,
        ), logs)
        metrics_server.apply(self.kubectl, apiservice)
        try:
            metrics_server.wait_available(self.kubectl, proc, timeout=timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise ClusterError(str(exc)) from None

    def add_host(self, node_name: str) -> netns_mod.HostNetns:
        """Give node `node_name` a "Mac" of its own (namespace, InternalIP, credentials), so
        several nodes can serve the same port as separate Macs do."""
        assert self.state is not None, "cluster is not up"
        if node_name in self.state.hosts:
            return self.state.host_for(node_name)
        host = netns_mod.create(f"{self.state.tag}{len(self.state.hosts) + 1:x}")
        self.state.hosts[node_name] = host.to_dict()
        self.state.save()
        pki_dir = self.dir / "pki"
        client, _ = pki.node_credentials(pki_dir, node_name=node_name, node_ip=host.ns_ip)
        write_kubeconfig(self.state.node_kubeconfig(node_name), server=self.state.server, ca=pki_dir / "ca.crt",
                         cert=client.cert, key=client.key, user=f"system:node:{node_name}")
        return host

    def _spawn(self, name: str, cmd: list[str], logs: Path) -> Proc:
        assert self.state is not None
        try:
            proc = processes.start(name, cmd, log=logs / f"{name}.log")
        except OSError as exc:
            raise ClusterError(f"cannot start {name} ({cmd[0]}): {exc.strerror}") from None
        self.state.procs.append(proc.to_dict())
        self.state.save()
        return proc

    def _wait_ready(self, name: str, url: str, certs: pki.ClusterPKI, *, timeout: float) -> None:
        ctx = ssl.create_default_context(cafile=str(certs.ca.cert))
        ctx.load_cert_chain(str(certs.admin.cert), str(certs.admin.key))
        proc = self._proc(name)
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not proc.alive():
                raise ClusterError(f"{name} exited during start-up; last lines of {proc.log}:\n{proc.log_tail()}")
            try:
                with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ClusterError(f"{name} not ready after {timeout:.0f}s ({last}); see {proc.log}")

    def _wait_for_defaults(self, bins: Binaries, admin: Path, *, timeout: float) -> None:
        """The default ServiceAccount and the kube-node-lease namespace exist: the
        controller manager is working and a node can heartbeat."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ok = subprocess.run(
                [str(bins.kubectl), f"--kubeconfig={admin}", "get", "serviceaccount/default", "namespace/kube-node-lease", "-o", "name"],
                capture_output=True, text=True,
            )
            if ok.returncode == 0:
                return
            for name in ("kube-controller-manager", "kube-scheduler"):
                proc = self._proc(name)
                if not proc.alive():
                    raise ClusterError(f"{name} exited during start-up; last lines of {proc.log}:\n{proc.log_tail()}")
            time.sleep(0.5)
        raise ClusterError(f"the controller manager did not create the default ServiceAccount within {timeout:.0f}s")

    def _apply_node_rbac(self, bins: Binaries, admin: Path) -> None:
        """What a node needs beyond the API server's defaults: renewing its client certificate."""
        manifest = MANIFESTS / "node-client-rotation-rbac.yaml"
        done = subprocess.run([str(bins.kubectl), f"--kubeconfig={admin}", "apply", "-f", str(manifest)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterError(f"`kubectl apply -f {manifest}` failed: {done.stderr.strip()}")

    def _set_up_token_join(self, certs: pki.ClusterPKI) -> None:
        """What `kubeadm init` leaves for `vnode join`: the RBAC, the cluster-info ConfigMap
        and a bootstrap token (kept owner-only in the cluster directory for join_command)."""
        assert self.state is not None
        manifest = MANIFESTS / "bootstrap-rbac.yaml"
        self.kubectl("apply", "-f", str(manifest))
        token = bootstrap_tokens.new_token()
        objects = [bootstrap_tokens.cluster_info(server=self.state.server, ca_pem=certs.ca.cert.read_bytes()),
                   bootstrap_tokens.token_secret(token)]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
        replace_private(self.dir / "bootstrap-token", str(token).encode())

    def join_command(self, *, program: tuple[str, ...] | list[str] = ("vnode",)) -> list[str]:
        """`vnode join` for this cluster with its bootstrap token, as `kubeadm init` prints it."""
        assert self.state is not None, "cluster is not up"
        token = (self.dir / "bootstrap-token").read_text().strip()
        ca = x509.load_pem_x509_certificate((self.dir / "pki" / "ca.crt").read_bytes())
        return [*program, "join", self.state.server, "--token", token, "--discovery-token-ca-cert-hash", ca_cert_hash(ca)]

    def _proc(self, name: str) -> Proc:
        assert self.state is not None
        return next(Proc.from_dict(p) for p in self.state.procs if p["name"] == name)

    # -- for users and tests -------------------------------------------------------------
    def start_again(self, name: str, *, timeout: float = 60.0) -> Proc:
        """Start a control-plane process that died (or was killed) with its own command line,
        and wait until the API server answers /readyz: the outage tests' "it came back"."""
        assert self.state is not None
        old = self._proc(name)
        processes.stop(old)  # nothing, if it is gone already
        proc = processes.start(name, old.cmd, log=Path(old.log))
        self.state.procs = [proc.to_dict() if p["name"] == name else p for p in self.state.procs]
        self.state.save()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kubectl("get", "--raw", "/readyz", check=False).returncode == 0:
                return proc
            time.sleep(0.2)
        raise ClusterError(f"{name} did not become ready within {timeout:.0f}s after a restart; see {old.log}")

    def kubectl(self, *args: str, kubeconfig: Path | None = None, check: bool = True, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
        assert self.state is not None, "cluster is not up"
        cmd = [self.state.kubectl, f"--kubeconfig={kubeconfig or self.state.admin_kubeconfig}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise ClusterError(f"`kubectl {' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def agent_command(self, *extra: str, node_name: str | None = None, serving_cert: bool = True, client_ca: bool = True,
                      kubeconfig: Path | None = None) -> list[str]:
        """The command line of `vnode run` for this cluster's node, inside the node's namespace
        (with the node kubeconfig the cluster made, unless `kubeconfig` names another)."""
        assert self.state is not None
        name = node_name or self.state.node_name
        host = self.state.host_for(name)
        pki_dir = self.dir / "pki"
        return [
            *host.exec_prefix(), sys.executable, "-m", "vnode", "run",
            f"--kubeconfig={kubeconfig or self.state.node_kubeconfig(name)}", f"--node-name={name}",
            f"--host-ip={host.ns_ip}", f"--state-dir={self.dir / 'agents' / name}",
            f"--log-dir={self.dir / 'agents' / name / 'logs'}",
            *([f"--tls-cert-file={pki_dir / f'node-{name}-serving.crt'}", f"--tls-private-key-file={pki_dir / f'node-{name}-serving.key'}"]
              if serving_cert else []),
            *([f"--client-ca-file={pki_dir / 'ca.crt'}"] if client_ca else []), *extra,
        ]

    def start_agent(self, *extra: str, node_name: str | None = None, env: dict[str, str] | None = None, serving_cert: bool = True,
                    client_ca: bool = True,
                    kubeconfig: Path | None = None) -> Proc:
        """Start `vnode run` in the background and record it, so `down()` stops it too."""
        assert self.state is not None
        name = node_name or self.state.node_name
        runs = len(list((self.dir / "logs").glob(f"vnode-{name}.*.log")))
        log = self.dir / "logs" / f"vnode-{name}.{runs + 1}.log"
        proc = processes.start(f"vnode-{name}", self.agent_command(*extra, node_name=name, serving_cert=serving_cert, client_ca=client_ca, kubeconfig=kubeconfig), log=log, env={**os.environ, **(env or {})})
        self.state.procs.append(proc.to_dict())
        self.state.save()
        return proc

    def forget(self, proc: Proc) -> None:
        """Drop a stopped process from the record."""
        assert self.state is not None
        self.state.procs = [p for p in self.state.procs if p["pid"] != proc.pid]
        self.state.save()


CORE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
