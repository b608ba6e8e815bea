"""The upstream suites in the test command (issue 12): Kubernetes e2e tiers 1 and 2 and
virtual-kubelet's e2e suite against a vnode node, as `make conformance` runs them (its own
cluster, with the pod rewrite; tests/conformance/). A cold run adds about 6 minutes of Go
builds (e2e.test and the virtual-kubelet driver, after the control plane) and 3 of specs,
so CI runs all of it; the table of results is in the failure message."""

from __future__ import annotations

import os

import pytest

from tests.conformance import report, runner, specs


@pytest.mark.timeout(3600)
def test_upstream_suites_pass_against_the_mac_node(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("the conformance run needs root to create the node's network namespace")
    run = runner.conformance([specs.TIER1, specs.TIER2, specs.VK], work=tmp_path / "conformance")
    assert len(run.results) == len(specs.TIER1_SPECS) + len(specs.TIER2_SPECS) + len(specs.VK_TESTS)
    failed = [r for r in run.results if r.status == report.FAIL]
    assert not failed, f"{len(failed)} upstream specs failed (logs: {run.logs}):\n" + report.table(run.results)
    skipped = {r.spec for r in run.results if r.status == report.SKIP}
    assert skipped == set(specs.VK_SKIPS) | set(specs.K8S_SKIPS), "a spec the harness runs was skipped by its suite"
