"""The agent: owns every long-lived task of `vnode run` and shuts them down together.

One asyncio TaskGroup is the single owner: a task that fails fatally (a refused Node
takeover, say) cancels its siblings, and SIGTERM/SIGINT cancel the group, so nothing is
left running behind a dead agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
from collections.abc import Awaitable
from pathlib import Path

import aiohttp

from vnode import __version__
from vnode.config import Settings
from vnode.kubeclient import KubeClient, KubeconfigError
from vnode.kubelet_api.auth import Authenticator, Authorizer
from vnode.kubelet_api.context import ApiContext, StreamLimits
from vnode.kubelet_api.server import KubeletServer, build_app, tls_context
from vnode.metrics import probe_registry, registry
from vnode.node.controller import NodeController
from vnode.node.lease import LeaseController
from vnode.node.registration import TakeoverRefused
from vnode.node import certs, client_certs, identity
from vnode.node.budget import allocatable_memory
from vnode.node.status import NodeIdentity
from vnode.pods.admission import MemoryBudget, PortRegistry
from vnode.pods.api_view import PodContainers
from vnode.pods.controller import PodController
from vnode.pods.probe_stats import ProbeStats
from vnode.pods.env import EnvResolver
from vnode.pods.eviction import EvictionManager
from vnode.pods.events import EventRecorder
from vnode.pods.status import StatusManager
from vnode.pods.thresholds import format_duration, parse_statements
from vnode.pods.worker import PodContext
from vnode.provider.host import detect_host
from vnode.provider.models import ModelStore
from vnode.provider.serverbin import find_llama_server
from vnode.provider.supervisor import Supervisor
from vnode.provider.translate import default_runtime_table
from vnode.status import file as status_file

log = logging.getLogger("vnode.agent")

EXIT_CONFIG = 2
EXIT_REFUSED = 3


class ServingError(RuntimeError):
    """The kubelet API cannot be served as configured (certificate, address)."""


async def serve_kubelet_api(settings: Settings, api: KubeClient, api_ctx: ApiContext,
                            serving: certs.ServingState | None = None) -> None:
    """Obtain the serving certificate (flags, CSR or self-signed), then serve until cancelled,
    keeping the certificate fresh (see certs.keep_fresh)."""
    pki, where = settings.state_dir / "pki", {"node_name": settings.node_name, "host_ip": str(settings.host_ip)}
    renew: certs.Renewer | None
    if settings.tls_cert_file and settings.tls_private_key_file:
        cert, key = settings.tls_cert_file, settings.tls_private_key_file
        renew = None  # the operator's files: reloaded when they change
    elif settings.bootstrap_serving_cert:
        try:
            cert, key = await certs.from_csr(api, pki, **where)
        except certs.CertificateDenied as exc:
            raise ServingError(str(exc)) from None

        def renew() -> Awaitable[tuple[Path, Path]]:
            return certs.from_csr(api, pki, renew=True, **where)
    elif settings.self_signed_serving_cert:
        cert, key = await asyncio.to_thread(certs.self_signed, pki, **where)

        def renew() -> Awaitable[tuple[Path, Path]]:
            return asyncio.to_thread(certs.self_signed, pki, renew=True, **where)
    else:
        log.warning("kubelet API not served: pass --tls-cert-file/--tls-private-key-file, --bootstrap-serving-cert "
                    "(a CSR an admin approves) or --self-signed-serving-cert; kubectl logs/exec and metrics need it")
        return
    try:
        tls = tls_context(cert_file=cert, key_file=key, client_ca_file=settings.client_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ServingError(f"the serving certificate ({cert}, {key}) cannot be used: {exc}") from None
    app = build_app(api_ctx, authn=Authenticator(api), authz=Authorizer(api, node_name=settings.node_name),
                    anonymous=settings.anonymous_auth)
    server = KubeletServer(app, host=str(settings.host_ip), port=settings.kubelet_port, tls=tls)
    try:
        await server.start()
    except OSError as exc:
        raise ServingError(f"cannot listen on {settings.host_ip}:{settings.kubelet_port} for the kubelet API: {exc.strerror}") from None
    try:
        await certs.keep_fresh(tls, Path(cert), Path(key), renew=renew, state=serving)  # runs until cancelled
    finally:
        await server.close()


def public_config(settings: Settings) -> dict:
    """What /configz shows: the settings, in the kubelet's spelling where one exists."""
    return {
        "nodeName": settings.node_name,
        "address": str(settings.host_ip),
        "port": settings.kubelet_port,
        "maxPods": settings.max_pods,
        "nodeLeaseDurationSeconds": settings.lease_duration_seconds,
        "nodeStatusUpdateFrequency": f"{settings.node_status_update_seconds:g}s",
        "nodeStatusReportFrequency": f"{settings.node_status_report_seconds:g}s",
        "authentication": {"anonymous": {"enabled": settings.anonymous_auth}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(settings.client_ca_file or "")}},
        "authorization": {"mode": "Webhook"},
        "rotateCertificates": settings.rotate_certificates,
        "evictionHard": parse_statements(settings.eviction_hard, sep="<"),
        "evictionSoft": parse_statements(settings.eviction_soft, sep="<"),
        "evictionSoftGracePeriod": parse_statements(settings.eviction_soft_grace_period, sep="="),
        "evictionMinimumReclaim": parse_statements(settings.eviction_minimum_reclaim, sep="="),
        "evictionPressureTransitionPeriod": format_duration(settings.eviction_pressure_transition_period),
        "evictionMaxPodGracePeriod": settings.eviction_max_pod_grace_period,
        "streamingConnectionIdleTimeout": format_duration(settings.streaming_connection_idle_timeout),
        "vnode": {"memoryFraction": settings.memory_fraction, "offline": settings.offline,
                  "allowExecProbes": settings.allow_exec_probes, "registerTaint": settings.register_taint,
                  "requireNodeIdentity": settings.require_node_identity, "podPortRange": settings.pod_port_range},
    }


def identity_from(settings: Settings) -> NodeIdentity:
    return NodeIdentity(
        name=settings.node_name,
        host_ip=str(settings.host_ip),
        kubelet_port=settings.kubelet_port,
        max_pods=settings.max_pods,
        register_taint=settings.register_taint,
        memory_fraction=settings.memory_fraction,
        extra_labels=dict(settings.labels),
    )


async def run_agent(settings: Settings) -> int:
    """Run until signalled. Returns the process exit code."""
    try:
        api = KubeClient.from_kubeconfig(settings.kubeconfig)
    except KubeconfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    settings.model_store.mkdir(parents=True, exist_ok=True)
    host = detect_host()
    llama_server = find_llama_server(settings.llama_server)

    def readiness_problems() -> list[str]:
        if llama_server is None:
            return ["llama-server not found: install it or pass --llama-server PATH"]
        return []

    lease = LeaseController(api=api, node_name=settings.node_name, duration_seconds=settings.lease_duration_seconds,
                            on_recovered=lambda: (node.resync(), pods.resync()))  # the watches may hang after an outage

    async def heartbeat() -> None:
        await node.registered.wait()
        await lease.run(node_uid=lambda: node.node_uid)  # a re-registered Node has a new uid

    facts = await host.facts()
    http = aiohttp.ClientSession()
    status = StatusManager(api)
    models = ModelStore(settings.model_store, endpoint=settings.hf_endpoint or os.environ.get("HF_ENDPOINT"), offline=settings.offline)
    probes = ProbeStats(live=lambda: pods.workers.keys())  # a pod's probe series go with its worker
    ctx = PodContext(
        api=api,
        node_name=settings.node_name,
        pod_ip=str(settings.host_ip),
        status=status,
        events=EventRecorder(api, node_name=settings.node_name),
        supervisor=Supervisor(settings.state_dir),
        models=models,
        runtime=default_runtime_table(str(llama_server or "llama-server")),
        budget=MemoryBudget(allocatable_memory(facts.memory_bytes, settings.memory_fraction)),
        ports=PortRegistry(str(settings.host_ip), allowed=settings.pod_ports),
        env=EnvResolver(api),
        http=http,
        model_store=settings.model_store,
        allow_exec_probes=settings.allow_exec_probes,
        drain_quiet_seconds=settings.drain_quiet_seconds,
        probe_stats=probes,
    )
    pods = PodController(ctx)
    eviction = EvictionManager(
        thresholds=settings.eviction_thresholds,
        read_host=host.memory_signal,
        capacity=facts.memory_bytes,
        pods=pods.active_pods,
        running=pods.running_instances,
        evict=pods.evict,
        events=ctx.events,
        interval=settings.eviction_monitoring_interval,
        transition_seconds=settings.eviction_pressure_transition_period,
        max_pod_grace=settings.eviction_max_pod_grace_period,
        signal_file=settings.eviction_signal_file,
        node_name=settings.node_name,
    )
    node = NodeController(
        api=api,
        host=host,
        identity=identity_from(settings),
        disk_path=str(settings.state_dir),
        force=settings.force,
        update_seconds=settings.node_status_update_seconds,
        report_seconds=settings.node_status_report_seconds,
        readiness_problems=readiness_problems,
        memory_condition=eviction.memory_condition,
    )
    serving = certs.ServingState()
    metrics = registry(models=models, pods=pods, serving=serving, budget=ctx.budget, probes=probes,
                       evictions=lambda: eviction.evictions)
    api_ctx = ApiContext(node_name=settings.node_name, pods=pods, supervisor=ctx.supervisor, log_dir=settings.log_dir,
                         config=public_config(settings), ready=readiness_problems, metrics=metrics,
                         probe_metrics=probe_registry(probes),
                         running=pods.running_instances, state_dir=settings.state_dir, store_usage=models.disk_usage,
                         exec_enabled=settings.enable_exec, containers=PodContainers(pods, ctx.supervisor),
                         streams=StreamLimits(idle_timeout=settings.streaming_connection_idle_timeout))

    def agent_status() -> status_file.AgentStatus:
        return status_file.AgentStatus(
            pid=os.getpid(), version=__version__, node_name=settings.node_name,
            budget_total=ctx.budget.total, budget_used=ctx.budget.used,
            holdings=[status_file.Holding(pod_uid=uid, container=c, bytes=n) for (uid, c), n in sorted(ctx.budget.holdings().items())],
            downloads=[status_file.Download(model=k, done=d, total=t) for k, (d, t) in sorted(models.progress().items())],
        )

    async def kubelet_api() -> None:
        await node.registered.wait()
        await serve_kubelet_api(settings, api, api_ctx, serving)

    identity_checked = asyncio.Event()

    async def identity_check() -> None:
        await identity.check(api, node_name=settings.node_name, kubeconfig=str(settings.kubeconfig),
                             require=settings.require_node_identity)
        identity_checked.set()

    async def node_status() -> None:
        if settings.require_node_identity:  # nothing is written to the cluster as someone else
            await identity_checked.wait()
        await node.run()

    async def pod_layer() -> None:
        await node.registered.wait()
        await pods.run()

    async def evictions() -> None:
        await node.registered.wait()
        await eviction.run()

    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_signal(signum: int) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stopping.set()
        if main is not None:
            main.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    log.info(
        "vnode %s starting: node %s, InternalIP %s, API server %s",
        __version__, settings.node_name, settings.host_ip, api.server,
    )
    refused: list[BaseException] = []
    try:
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(identity_check(), name="identity-check")
                tasks.create_task(node_status(), name="node-status")
                tasks.create_task(heartbeat(), name="lease")
                tasks.create_task(status.run(), name="pod-status")
                tasks.create_task(ctx.events.run(), name="events")
                tasks.create_task(pod_layer(), name="pods")
                tasks.create_task(evictions(), name="eviction")
                tasks.create_task(kubelet_api(), name="kubelet-api")
                tasks.create_task(models.watch_size(), name="model-store-size")
                tasks.create_task(status_file.keep_written(settings.state_dir, agent_status), name="status-file")
                if settings.rotate_certificates:
                    tasks.create_task(client_certs.keep_fresh(api, node_name=settings.node_name, cert_dir=settings.state_dir / "pki"),
                                      name="client-certificate")
        except* (TakeoverRefused, ServingError, identity.IdentityRefused) as group:
            refused.extend(group.exceptions)
    except asyncio.CancelledError:
        if not stopping.is_set():
            raise
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        with contextlib.suppress(Exception):
            await models.close()
        with contextlib.suppress(Exception):
            await http.close()
        with contextlib.suppress(Exception):
            await api.close()
    if refused:
        log.error("%s", refused[0])
        return EXIT_CONFIG if isinstance(refused[0], ServingError | identity.IdentityRefused) else EXIT_REFUSED
    log.info("vnode stopped")
    return 0
