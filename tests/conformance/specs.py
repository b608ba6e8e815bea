"""Which upstream specs run against the Mac node, and why the others are skipped (issue 12).

Spec names are the full texts `e2e.test --list-tests` prints (Kubernetes v1.35.4), some with
a trailing space that is part of the name; the runner focuses on exactly these.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

KUBERNETES = "k8s-e2e"
TIER1, TIER2, VK = "tier1", "tier2", "vk"
VK_SUITE = "virtual-kubelet"

# Tier 1: no container image involved (the node object, its Lease, the kubelet API).
TIER1_SPECS: tuple[str, ...] = (
    "[sig-node] NodeLease NodeLease the kubelet should create and update a lease in the kube-node-lease namespace",
    "[sig-node] NodeLease NodeLease should have OwnerReferences set",
    "[sig-node] NodeLease NodeLease the kubelet should report node status infrequently",
    "[sig-network] Proxy version v1 should proxy logs on node using proxy subresource ",
    "[sig-network] Proxy version v1 should proxy logs on node with explicit kubelet port using proxy subresource ",
    "[sig-instrumentation] MetricsGrabber should grab all metrics from a Kubelet.",
    "[sig-instrumentation] Metrics should grab all metrics from kubelet /metrics/resource endpoint",
    "[sig-auth] [Feature:NodeAuthorizer] A node shouldn't be able to create another node",
    "[sig-auth] [Feature:NodeAuthorizer] A node shouldn't be able to delete another node",
    "[sig-auth] [Feature:NodeAuthorizer] Getting a non-existent configmap should exit with the Forbidden error, not a NotFound error",
    "[sig-auth] [Feature:NodeAuthorizer] Getting a non-existent secret should exit with the Forbidden error, not a NotFound error",
    "[sig-auth] [Feature:NodeAuthorizer] Getting a secret for a workload the node has access to should succeed",
    "[sig-auth] [Feature:NodeAuthorizer] Getting an existing configmap should exit with the Forbidden error",
    "[sig-auth] [Feature:NodeAuthorizer] Getting an existing secret should exit with the Forbidden error",
    "[sig-node] Node Lifecycle should run through the lifecycle of a node [Conformance]",
)

# Tier 2: single-pod [sig-node] specs; their pods are rewritten into Gemma servers (rewrite.py).
TIER2_SPECS: tuple[str, ...] = (
    "[sig-node] Pods should get a host IP [NodeConformance] [Conformance]",
    "[sig-node] Pods should be submitted and removed [NodeConformance] [Conformance]",
    "[sig-node] Pods should be updated [NodeConformance] [Conformance]",
    "[sig-node] Pods should allow activeDeadlineSeconds to be updated [NodeConformance] [Conformance]",
    "[sig-node] Pods should support remote command execution over websockets [NodeConformance] [Conformance]",
    "[sig-node] Pods should support pod readiness gates [NodeConformance]",
    "[sig-node] Pods Extended Delete Grace Period should be submitted and removed",
)

# virtual-kubelet's suite (test/e2e at v1.13.0), methods of EndToEndTestSuite in source order.
VK_TESTS: tuple[str, ...] = (
    "TestGetPods",
    "TestGetStatsSummary",
    "TestGetMetricsResource",
    "TestPodLifecycleGracefulDelete",
    "TestPodLifecycleForceDelete",
    "TestCreatePodWithOptionalInexistentSecrets",
    "TestCreatePodWithMandatoryInexistentSecrets",
    "TestCreatePodWithOptionalInexistentConfigMap",
    "TestCreatePodWithMandatoryInexistentConfigMap",
)

_STATS_UNREACHABLE = (
    "cannot reach the node: the suite fetches {path} through pods/<ns>/https:<node name>:10250/proxy, i.e. a pod "
    "named after the node whose IP is the kubelet's (virtual-kubelet's test setup runs the kubelet in such a pod); "
    "no such pod exists for vnode (404), and with one made by hand the API server's pod proxy sends no credentials, so "
    "vnode, as a kubelet with anonymous auth off, answers 401. vnode serves {path} to authenticated clients "
    "(tier 1 MetricsGrabber and Metrics specs, tests/e2e)"
)
_VK_EVENTS = (
    "waits for an event with reason {kind}, which only virtual-kubelet emits; vnode does what the kubelet does "
    "instead (seen when run once with --run-all-vk): {what}"
)
VK_SKIPS: dict[str, str] = {
    "TestGetStatsSummary": _STATS_UNREACHABLE.format(path="/stats/summary"),
    "TestGetMetricsResource": _STATS_UNREACHABLE.format(path="/metrics/resource"),
    "TestCreatePodWithOptionalInexistentSecrets": _VK_EVENTS.format(
        kind="OptionalSecretNotFound", what="a missing optional Secret is no error: the variable is left out and the pod runs, without an event"),
    "TestCreatePodWithMandatoryInexistentSecrets": _VK_EVENTS.format(
        kind="MandatorySecretNotFound",
        what="the container waits with reason CreateContainerConfigError naming the missing Secret, with a Failed event"),
    "TestCreatePodWithOptionalInexistentConfigMap": _VK_EVENTS.format(
        kind="OptionalConfigMapNotFound", what="a missing optional ConfigMap is no error: the variable is left out and the pod runs, without an event"),
    "TestCreatePodWithMandatoryInexistentConfigMap": _VK_EVENTS.format(
        kind="MandatoryConfigMapNotFound",
        what="the container waits with reason CreateContainerConfigError naming the missing ConfigMap, with a Failed event"),
}

# Harness skips of Kubernetes specs (none today: every spec listed above applies to a Mac node).
K8S_SKIPS: dict[str, str] = {}

TIERS: dict[str, tuple[str, ...]] = {TIER1: TIER1_SPECS, TIER2: TIER2_SPECS, VK: VK_TESTS}


def focus_regex(specs: Sequence[str]) -> str:
    """A --ginkgo.focus that selects these specs: their texts, escaped, unanchored (ginkgo
    matches the focus against a text with more around it than --list-tests prints)."""
    return "|".join(_go_escape(s) for s in specs)


def _go_escape(text: str) -> str:
    """regexp.QuoteMeta: RE2 accepts a backslash before any punctuation."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)
