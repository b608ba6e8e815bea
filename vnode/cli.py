"""`vnode run | demo | doctor | version | cluster up|down|status` — wiring only.

Argument errors exit 2 with one line naming the flag (argparse's own convention);
everything else is delegated to the agent or the local cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from vnode import __version__
from vnode.config import Settings, SettingsError, flag_name, load_settings

DEFAULT_CLUSTER_DIR = Path(os.environ.get("VNODE_CLUSTER_DIR", Path.home() / ".local" / "share" / "vnode" / "cluster"))


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _add_run(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="register this machine as a node and serve its pods")
    fields = Settings.model_fields
    run.add_argument("--config", type=Path, default=os.environ.get("VNODE_CONFIG"), help="YAML config file (VNODE_CONFIG)")
    for name in ("kubeconfig", "node_name", "host_ip", "kubelet_port", "memory_fraction", "max_pods", "state_dir",
                 "lease_duration_seconds", "node_status_update_seconds", "node_status_report_seconds",
                 "llama_server", "hf_endpoint", "tls_cert_file", "tls_private_key_file", "client_ca_file",
                 "log_dir", "log_format", "log_level", "drain_quiet_seconds"):
        run.add_argument(flag_name(name), dest=name, default=None, help=fields[name].description)
    for name in ("eviction_hard", "eviction_soft", "eviction_soft_grace_period", "eviction_minimum_reclaim",
                 "eviction_pressure_transition_period", "eviction_max_pod_grace_period", "eviction_monitoring_interval",
                 "eviction_signal_file"):
        run.add_argument(flag_name(name), dest=name, default=None, help=fields[name].description)
    run.add_argument("--label", dest="labels", action="append", type=_label, default=None, metavar="KEY=VALUE",
                     help=fields["labels"].description)
    run.add_argument("--register-taint", dest="register_taint", action=argparse.BooleanOptionalAction, default=None,
                     help=fields["register_taint"].description + " (default: on)")
    run.add_argument("--force", dest="force", action="store_true", default=None, help=fields["force"].description)
    run.add_argument("--offline", dest="offline", action="store_true", default=None, help=fields["offline"].description)
    run.add_argument("--enable-exec", dest="enable_exec", action=argparse.BooleanOptionalAction, default=None,
                     help=fields["enable_exec"].description + " (default: on)")
    for flag in ("bootstrap_serving_cert", "self_signed_serving_cert"):
        run.add_argument(flag_name(flag), dest=flag, action="store_true", default=None, help=fields[flag].description)
    run.add_argument("--anonymous-auth", dest="anonymous_auth", action="store_true", default=None,
                     help=fields["anonymous_auth"].description)
    run.add_argument("--rotate-certificates", dest="rotate_certificates", action=argparse.BooleanOptionalAction, default=None,
                     help=fields["rotate_certificates"].description + " (default: on)")
    run.add_argument("--require-node-identity", dest="require_node_identity", action="store_true", default=None,
                     help=fields["require_node_identity"].description)
    run.add_argument("--allow-exec-probes", dest="allow_exec_probes", action="store_true", default=None,
                     help=fields["allow_exec_probes"].description)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnode", description="An Apple Silicon Mac as a Kubernetes node.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    sub.add_parser("version", help="print the version")
    doctor = sub.add_parser("doctor", help="show what vnode sees on this machine and check that llama-server runs here")
    doctor.add_argument("--llama-server", type=Path, default=None, help="the server binary to check (default: as `vnode run` finds it)")
    demo = sub.add_parser("demo", help="start a local cluster, join this machine as a node, show it")
    demo.add_argument("--dir", type=Path, default=DEFAULT_CLUSTER_DIR, help="cluster directory")
    cluster = sub.add_parser("cluster", help="a local control plane built from source (no Docker)")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    csub.add_parser("build", help="build (or find cached) control-plane binaries and llama-server; print where they are")
    for action, text in (("up", "start it in the background"), ("down", "stop it"), ("status", "show it")):
        p = csub.add_parser(action, help=text)
        p.add_argument("--dir", type=Path, default=DEFAULT_CLUSTER_DIR, help="cluster directory")
        if action == "up":
            p.add_argument("--node-name", default="mac", help="name of the node the cluster expects")
            p.add_argument("--metrics-server", action=argparse.BooleanOptionalAction, default=True,
                           help="run metrics-server, so `kubectl top` and HPAs work (default: on)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"vnode {__version__}")
        return 0
    if args.command == "run":
        return _run(parser, args)
    if args.command == "doctor":
        from vnode.doctor import doctor

        return doctor(args.llama_server)
    if args.command == "demo":
        from vnode.demo import demo

        return demo(args.dir)
    if args.command == "cluster":
        return _cluster(args)
    parser.error(f"unknown command {args.command}")
    return 2


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    if overrides.get("labels") is not None:
        overrides["labels"] = dict(overrides["labels"])
    try:
        settings = load_settings(overrides, config_file=args.config)
    except SettingsError as exc:
        print(f"vnode run: error: {exc}", file=sys.stderr)
        return 2
    from vnode import log as vlog
    from vnode.agent import run_agent

    listener = vlog.setup(fmt=settings.log_format, level=settings.log_level, log_dir=settings.log_dir)
    try:
        return asyncio.run(run_agent(settings))
    except KeyboardInterrupt:
        return 130
    finally:
        if listener is not None:
            listener.stop()


def _cluster(args: argparse.Namespace) -> int:
    from vnode.cluster.build import BuildError
    from vnode.cluster.local import ClusterError, ClusterState, LocalCluster
    from vnode.cluster.netns import NetnsUnavailable

    if args.cluster_command == "build":
        from vnode.cluster.build import ensure_control_plane, ensure_llama_server

        try:
            bins = ensure_control_plane()
            llama = ensure_llama_server()
        except BuildError as exc:
            print(f"vnode cluster build: {exc}", file=sys.stderr)
            return 1
        for name, path in vars(bins).items():
            print(f"{name}: {path}")
        print(f"llama_server: {llama}")
        return 0
    if args.cluster_command == "status":
        state = ClusterState.load(args.dir.resolve())
        if state is None:
            print(f"no cluster in {args.dir}")
            return 1
        cluster = LocalCluster(args.dir)
        print(json.dumps({"running": cluster.running(), "server": state.server, "kubeconfig": state.admin_kubeconfig,
                          "node": state.node_name, "node_ip": state.host.ns_ip, "netns": state.host.name}, indent=2))
        return 0 if cluster.running() else 1
    cluster = LocalCluster(args.dir, node_name=getattr(args, "node_name", "mac"), metrics=getattr(args, "metrics_server", True))
    if args.cluster_command == "down":
        cluster.down()
        print(f"cluster in {args.dir} stopped")
        return 0
    try:
        state = cluster.up()
    except (ClusterError, BuildError, NetnsUnavailable) as exc:
        print(f"vnode cluster up: {exc}", file=sys.stderr)
        return 1
    print(f"cluster up: API server {state.server}")
    print(f"admin kubeconfig: {state.admin_kubeconfig}")
    print(f"node {state.node_name}: kubeconfig {state.node_kubeconfig()}, InternalIP {state.host.ns_ip} in netns {state.host.name}")
    if cluster.metrics:
        print("metrics-server: APIService v1beta1.metrics.k8s.io Available (kubectl top node, HPAs)")
    print(f"join it:  {' '.join(cluster.agent_command())}")
    print(f"kubectl:  {state.kubectl} --kubeconfig {state.admin_kubeconfig} get nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
