"""`vnode run | join | service | doctor | status | demo | version | cluster up|down|status` — wiring only.

Argument errors exit 2 with one line naming the flag (argparse's own convention);
everything else is delegated to the agent or the local cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vnode import __version__
from vnode.config import Settings, SettingsError, flag_name, load_settings

DEFAULT_CLUSTER_DIR = Path(os.environ.get("VNODE_CLUSTER_DIR", Path.home() / ".local" / "share" / "vnode" / "cluster"))


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, value


def _add_run(sub: argparse._SubParsersAction) -> None:
    _run_options(sub.add_parser("run", help="register this machine as a node and serve its pods"))


def _run_options(run: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags of `vnode run` (also taken by `vnode service install`); returns their actions."""
    first = len(run._actions)
    fields = Settings.model_fields
    run.add_argument("--config", type=Path, default=os.environ.get("VNODE_CONFIG"), help="YAML config file (VNODE_CONFIG)")
    for name in ("kubeconfig", "node_name", "host_ip", "kubelet_port", "memory_fraction", "max_pods", "state_dir",
                 "lease_duration_seconds", "node_status_update_seconds", "node_status_report_seconds",
                 "llama_server", "hf_endpoint", "tls_cert_file", "tls_private_key_file", "client_ca_file",
                 "log_dir", "log_format", "log_level", "drain_quiet_seconds", "pod_port_range",
                 "streaming_connection_idle_timeout"):
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
    return run._actions[first:]


_PATH_SETTINGS = {name for name, f in Settings.model_fields.items() if "Path" in str(f.annotation)} | {"config"}


def run_arguments(args: argparse.Namespace) -> list[str]:
    """The `vnode run` flags that were given, spelled out again with paths made absolute
    (a launchd job starts elsewhere, with nothing from this shell)."""
    out: list[str] = []
    for action in _run_options(argparse.ArgumentParser(add_help=False)):
        value = getattr(args, action.dest, None)
        if value is None or not action.option_strings:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse.BooleanOptionalAction):
            out.append(flag if value else "--no-" + flag[2:])
        elif action.nargs == 0:
            out.append(flag)
        elif isinstance(value, list):
            out.extend(f"{flag}={k}={v}" for k, v in value)
        else:
            text = str(Path(value).expanduser().absolute()) if action.dest in _PATH_SETTINGS else str(value)
            out.append(f"{flag}={text}")
    return out


def _add_service(sub: argparse._SubParsersAction) -> None:
    service = sub.add_parser("service", help="run `vnode run` as a launchd service (LaunchAgent, or LaunchDaemon with --system)")
    ssub = service.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    install = ssub.add_parser("install", help="install and start the service with these `vnode run` settings (idempotent)")
    _run_options(install)
    for action, text in (("uninstall", "stop and remove the service"), ("status", "show whether the service runs")):
        p = ssub.add_parser(action, help=text)
        if action == "status":
            p.add_argument("--json", action="store_true", help="print JSON")
    for p in (install, *(ssub.choices[a] for a in ("uninstall", "status"))):
        p.add_argument("--system", action="store_true",
                       help="a LaunchDaemon (at boot, as an unprivileged account; needs root) instead of the user's LaunchAgent")
    install.add_argument("--user", default=None, help="account the LaunchDaemon runs as (default: _vnode)")


def _add_join(sub: argparse._SubParsersAction) -> None:
    join = sub.add_parser("join", help="join this machine to a cluster with a bootstrap token, as `kubeadm join`")
    join.add_argument("server", metavar="API_SERVER", help="the API server, https://HOST:PORT")
    join.add_argument("--token", required=True, help="bootstrap token <id>.<secret> (`kubeadm token create`)")
    join.add_argument("--discovery-token-ca-cert-hash", dest="ca_cert_hashes", action="append", default=[], metavar="sha256:HEX",
                      help="pin the cluster CA by the SHA-256 of its public key (repeatable)")
    join.add_argument("--discovery-token-unsafe-skip-ca-verification", dest="unsafe_skip_ca", action="store_true",
                      help="trust the CA the token-signed cluster-info names without a pin")
    join.add_argument("--node-name", default=None, help="name of the Node (default: the hostname)")
    join.add_argument("--host-ip", default=None, help="the node's InternalIP for `vnode run` (default: the address on the route to the API server)")
    join.add_argument("--state-dir", type=Path, default=None, help="where `vnode run` keeps its state; the certificate goes to its pki/")
    join.add_argument("--kubeconfig-out", type=Path, default=None, help="where the node kubeconfig is written (default: STATE_DIR/kubeconfig)")
    join.add_argument("--no-service", dest="service", action="store_false", help="do not install the launchd service (`vnode service install`) that runs the node")
    join.add_argument("--discovery-timeout", type=float, default=60.0, metavar="SECONDS",
                      help="how long to wait for cluster-info and its signature (default: 60)")
    join.add_argument("--tls-bootstrap-timeout", type=float, default=300.0, metavar="SECONDS",
                      help="how long to wait for the client certificate (default: 300)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vnode", description="An Apple Silicon Mac as a Kubernetes node.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_run(sub)
    _add_join(sub)
    _add_service(sub)
    sub.add_parser("version", help="print the version")
    doctor = sub.add_parser("doctor", help="check this machine and the settings `vnode run` would use: one pass/fail line each")
    _run_options(doctor)
    doctor.add_argument("--json", action="store_true", help="print JSON")
    doctor.add_argument("--system", action="store_true", help="the LaunchDaemon's settings and state, not the LaunchAgent's")
    status = sub.add_parser("status", help="the node, its pods (port, phase, memory, restarts), the budget and the model store")
    _run_options(status)
    status.add_argument("--json", action="store_true", help="print JSON (the default when not on a terminal)")
    status.add_argument("--system", action="store_true", help="the LaunchDaemon's settings, not the LaunchAgent's")
    demo = sub.add_parser("demo", help="start a local cluster, join this machine as a node, show it")
    demo.add_argument("--dir", type=Path, default=DEFAULT_CLUSTER_DIR, help="cluster directory")
    cluster = sub.add_parser("cluster", help="a local control plane built from source (no Docker)")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    build = csub.add_parser("build", help="build (or find cached) control-plane binaries and llama-server; print where they are")
    build.add_argument("--suites", action="store_true",
                       help="also the upstream test suites (e2e.test, virtual-kubelet's), which `make test` runs")
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
    if args.command == "join":
        return _join(args)
    if args.command == "service":
        return _service(args)
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "status":
        return _status(args)
    if args.command == "demo":
        from vnode.demo import demo

        return demo(args.dir)
    if args.command == "cluster":
        return _cluster(args)
    parser.error(f"unknown command {args.command}")
    return 2


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    if overrides.get("labels") is not None:
        overrides["labels"] = dict(overrides["labels"])
    return load_settings(overrides, config_file=args.config)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
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


def _join(args: argparse.Namespace) -> int:
    from vnode.config import DNS1123_SUBDOMAIN, default_node_name, default_state_dir
    from vnode.join import command, discovery

    try:
        server, token = discovery.parse_server(args.server), discovery.parse_token(args.token)
        pins = discovery.parse_pins(args.ca_cert_hashes)
        node_name = args.node_name or default_node_name()
        if not DNS1123_SUBDOMAIN.match(node_name) or len(node_name) > 253:
            raise discovery.JoinInputError(f"--node-name: {node_name!r} is not a valid Node name (a lowercase DNS subdomain)")
        if not pins and not args.unsafe_skip_ca:
            raise discovery.JoinInputError(
                "--discovery-token-ca-cert-hash: required; token discovery without pinning the cluster CA trusts whoever "
                "answers at the address (the hash is printed by `kubeadm init` and `vnode cluster up`); "
                "--discovery-token-unsafe-skip-ca-verification goes on without it")
        for flag, value in (("--discovery-timeout", args.discovery_timeout), ("--tls-bootstrap-timeout", args.tls_bootstrap_timeout)):
            if not value > 0:
                raise discovery.JoinInputError(f"{flag}: must be a positive number of seconds, got {value}")
        state_dir = (args.state_dir or default_state_dir()).expanduser().absolute()
        options = command.JoinOptions(
            server=server, token=token, pins=pins, node_name=node_name,
            host_ip=command.validate_host_ip(args.host_ip) if args.host_ip else None, state_dir=state_dir,
            kubeconfig=(args.kubeconfig_out or state_dir / "kubeconfig").expanduser().absolute(), service=args.service,
            discovery_timeout=args.discovery_timeout, bootstrap_timeout=args.tls_bootstrap_timeout,
        )
    except discovery.JoinInputError as exc:
        print(f"vnode join: error: {exc}", file=sys.stderr)
        return 2
    import logging

    logging.basicConfig(level=logging.WARNING, format="vnode join: %(message)s", stream=sys.stderr)
    try:
        return asyncio.run(command.join(options))
    except KeyboardInterrupt:
        return 130


def _effective(args: argparse.Namespace) -> tuple[Callable[[str], Any], str]:
    """The `vnode run` settings to look at: the flags given, else the installed service's,
    else the defaults; a reader of one setting and where they came from. Settings `vnode run`
    would refuse are still read one by one, so the rest can be checked."""
    from vnode.service import command as service
    from vnode.service.launchd import installed_program

    source = "the flags given"
    if not run_arguments(args):
        where = service.layout(system=args.system)
        program = installed_program(where)
        if program is not None:
            run = argparse.ArgumentParser(add_help=False)
            _run_options(run)
            args = run.parse_known_args(program)[0]
            args.config = getattr(args, "config", None)
            source = f"those of the installed {where.kind} ({where.plist})"
        else:
            source = "the defaults (give `vnode run`'s flags, or install the service, to check yours)"
    fields = Settings.model_fields
    try:
        settings: Settings | None = _settings(args)
    except SettingsError:
        settings = None

    def value(name: str) -> Any:
        if settings is not None:
            return getattr(settings, name)
        given = getattr(args, name, None)
        if given is not None:
            return given
        field = fields[name]
        if field.default_factory:
            return field.default_factory()  # type: ignore[call-arg]
        return None if field.is_required() else field.default

    return value, source


def _path(value: Any) -> Path | None:
    return Path(value).expanduser() if value else None


def _doctor(args: argparse.Namespace) -> int:
    from vnode.doctor import Inputs, doctor

    value, source = _effective(args)
    inputs = Inputs(llama_server=_path(value("llama_server")), kubeconfig=_path(value("kubeconfig")),
                    node_name=str(value("node_name")), host_ip=str(value("host_ip")) if value("host_ip") else None,
                    kubelet_port=int(value("kubelet_port")), state_dir=Path(value("state_dir")).expanduser(),
                    memory_fraction=float(value("memory_fraction")) if value("memory_fraction") else None,
                    tls_cert_file=_path(value("tls_cert_file")), system=args.system)
    return doctor(inputs, source=source, as_json=args.json)


def _status(args: argparse.Namespace) -> int:
    from vnode.status.command import status

    value, _ = _effective(args)
    as_json = args.json or not sys.stdout.isatty()
    return asyncio.run(status(kubeconfig=_path(value("kubeconfig")), node_name=str(value("node_name")),
                              state_dir=Path(value("state_dir")).expanduser(), as_json=as_json))


def _service(args: argparse.Namespace) -> int:
    from vnode.service import command as service

    try:
        if args.service_command == "install":
            try:
                _settings(args)  # the job would only exit 2 over and over
            except SettingsError as exc:
                print(f"vnode service install: error: {exc}", file=sys.stderr)
                return 2
            asyncio.run(service.install(run_arguments(args), system=args.system, user=args.user))
            return 0
        if args.service_command == "uninstall":
            asyncio.run(service.uninstall(system=args.system))
            return 0
        return asyncio.run(service.status(system=args.system, as_json=args.json))
    except service.ServiceError as exc:
        print(f"vnode service {args.service_command}: {exc}", file=sys.stderr)
        return 1


def _cluster(args: argparse.Namespace) -> int:
    from vnode.cluster.build import BuildError
    from vnode.cluster.local import ClusterError, ClusterState, LocalCluster
    from vnode.cluster.netns import NetnsUnavailable

    if args.cluster_command == "build":
        from vnode.cluster.build import ensure_control_plane, ensure_llama_server

        try:
            bins = ensure_control_plane()
            llama = ensure_llama_server()
            if args.suites:
                from vnode.cluster.build import ensure_conformance_suites

                e2e, vk = ensure_conformance_suites()
        except BuildError as exc:
            print(f"vnode cluster build: {exc}", file=sys.stderr)
            return 1
        for name, path in vars(bins).items():
            print(f"{name}: {path}")
        print(f"llama_server: {llama}")
        if args.suites:
            print(f"e2e_test: {e2e}")
            print(f"vk_e2e_test: {vk}")
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
    print("join another Mac with a bootstrap token (valid 24h), as `kubeadm join`:")
    print(f"  {shlex.join(cluster.join_command())}")
    print(f"kubectl:  {state.kubectl} --kubeconfig {state.admin_kubeconfig} get nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
