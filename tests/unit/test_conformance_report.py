"""The conformance harness's reading of the suites' reports, its table, and the rewrite policy
(issue 12): plain data shaped as ginkgo's JUnit and `go test -v` write them."""

from __future__ import annotations

import re

from tests.conformance import report, rewrite, specs
from tests.conformance.report import FAIL, PASS, SKIP, Result

JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="3" errors="0" failures="1" time="95.1">
  <testsuite name="Kubernetes e2e suite" package="/tmp/w" tests="5" skipped="3" failures="1" errors="0" time="95.1">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="0.03"></testcase>
    <testcase name="[It] [sig-node] NodeLease NodeLease should have OwnerReferences set" classname="Kubernetes e2e suite" status="passed" time="0.09"></testcase>
    <testcase name="[It] [sig-network] Proxy version v1 should proxy logs on node using proxy subresource " classname="Kubernetes e2e suite" status="passed" time="0.16"></testcase>
    <testcase name="[It] [sig-node] Pods should support pod readiness gates [NodeConformance]" classname="Kubernetes e2e suite" status="failed" time="62.5">
      <failure message="[FAILED] Timed out after 60.000s.&#xA;pod is not Ready" type="failed">[FAILED] Timed out after 60.000s.
pod is not Ready
In [It] at: k8s.io/kubernetes@v1.35.4/test/e2e/common/node/pods.go:815</failure>
    </testcase>
    <testcase name="[It] [sig-instrumentation] Metrics should grab all metrics from kubelet /metrics/resource endpoint" classname="Kubernetes e2e suite" status="skipped" time="0.2">
      <skipped message="skipped - the kubelet does not serve /metrics/resource"></skipped>
    </testcase>
    <testcase name="[It] [sig-apps] Deployment should do something unrelated" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
  </testsuite>
</testsuites>
"""

WANTED = (
    "[sig-node] NodeLease NodeLease should have OwnerReferences set",
    "[sig-network] Proxy version v1 should proxy logs on node using proxy subresource ",
    "[sig-node] Pods should support pod readiness gates [NodeConformance]",
    "[sig-instrumentation] Metrics should grab all metrics from kubelet /metrics/resource endpoint",
    "[sig-node] Node Lifecycle should run through the lifecycle of a node [Conformance]",
)


def test_junit_gives_one_result_per_wanted_spec_in_order():
    results = report.parse_junit(JUNIT, suite="k8s-e2e tier1", specs=WANTED)
    assert [r.spec for r in results] == [s.strip() for s in WANTED]
    assert [r.status for r in results] == [PASS, PASS, FAIL, SKIP, FAIL]
    assert results[0].seconds == 0.09


def test_junit_failure_reason_is_the_first_line_of_the_message():
    failed = report.parse_junit(JUNIT, suite="s", specs=WANTED)[2]
    assert failed.reason == "[FAILED] Timed out after 60.000s."


def test_junit_skip_keeps_the_suites_reason():
    skipped = report.parse_junit(JUNIT, suite="s", specs=WANTED)[3]
    assert skipped.reason == "the kubelet does not serve /metrics/resource"


def test_junit_spec_missing_from_the_report_fails_rather_than_disappears():
    missing = report.parse_junit(JUNIT, suite="s", specs=WANTED)[4]
    assert missing.status == FAIL and "not run" in missing.reason


def test_junit_failed_before_suite_is_the_reason_for_every_spec():
    xml = """<testsuites><testsuite name="Kubernetes e2e suite">
      <testcase name="[SynchronizedBeforeSuite]" status="failed" time="300">
        <failure message="[FAILED] there are not enough schedulable nodes: 0 of 1" type="failed"/>
      </testcase></testsuite></testsuites>"""
    results = report.parse_junit(xml, suite="s", specs=WANTED[:2])
    assert all(r.status == FAIL for r in results)
    assert results[0].reason == "BeforeSuite failed: [FAILED] there are not enough schedulable nodes: 0 of 1"


def test_junit_labels_after_the_name_still_match():
    xml = """<testsuites><testsuite>
      <testcase name="[It] [sig-node] Pods should get a host IP [NodeConformance] [Conformance] [sig-node, NodeConformance, Conformance]" status="passed" time="2"/>
      </testsuite></testsuites>"""
    (result,) = report.parse_junit(xml, suite="s", specs=["[sig-node] Pods should get a host IP [NodeConformance] [Conformance]"])
    assert result.status == PASS


# go test -v of the virtual-kubelet driver as Go 1.26 prints it: t.Log lines streamed under
# `=== RUN`, the results of all subtests at the end.
GO_OUTPUT = """=== RUN   TestEndToEnd
    suite.go:62: True
=== RUN   TestEndToEnd/TestCreatePodWithMandatoryInexistentSecrets
    suite.go:61: Skipped due to shouldSkipTest()
=== RUN   TestEndToEnd/TestGetPods
    basic.go:43: Created pod: nginx-testgetpods-89g6d
    basic.go:49: Pod nginx-testgetpods-89g6d ready
=== RUN   TestEndToEnd/TestGetStatsSummary
    basic.go:95: the server has asked for the client to provide credentials (get pods https:mac:10250)
=== RUN   TestEndToEnd/TestPodLifecycleForceDelete
    basic.go:277: Created pod: nginx-testpodlifecycleforcedelete-6zrp9
    basic.go:333: Pod ended as phase: Running
--- FAIL: TestEndToEnd (3.63s)
    --- SKIP: TestEndToEnd/TestCreatePodWithMandatoryInexistentSecrets (0.00s)
    --- PASS: TestEndToEnd/TestGetPods (0.07s)
    --- FAIL: TestEndToEnd/TestGetStatsSummary (0.07s)
    --- PASS: TestEndToEnd/TestPodLifecycleForceDelete (2.20s)
FAIL
"""


def test_go_test_results_with_their_messages():
    tests = ("TestGetPods", "TestGetStatsSummary", "TestPodLifecycleForceDelete",
             "TestCreatePodWithMandatoryInexistentSecrets", "TestPodLifecycleGracefulDelete")
    results = {r.spec: r for r in report.parse_go_test(GO_OUTPUT, suite="virtual-kubelet", tests=tests)}
    assert results["TestGetPods"] == Result("virtual-kubelet", "TestGetPods", PASS, "", 0.07)
    assert results["TestGetStatsSummary"].status == FAIL
    assert results["TestGetStatsSummary"].reason.startswith("the server has asked for the client to provide credentials")
    assert results["TestPodLifecycleForceDelete"].seconds == 2.2
    assert results["TestCreatePodWithMandatoryInexistentSecrets"].status == SKIP
    assert results["TestPodLifecycleGracefulDelete"].status == FAIL
    assert "not run" in results["TestPodLifecycleGracefulDelete"].reason


def test_go_test_messages_indented_under_the_result_line():
    output = """--- FAIL: TestEndToEnd (1.00s)
    --- FAIL: TestEndToEnd/TestGetPods (1.00s)
        basic.go:36: pods "x" is forbidden
FAIL
"""
    (result,) = report.parse_go_test(output, suite="vk", tests=["TestGetPods"])
    assert (result.status, result.reason) == (FAIL, 'pods "x" is forbidden')


def test_go_test_crash_before_any_result():
    (result,) = report.parse_go_test("panic: boom\n", suite="vk", tests=["TestGetPods"])
    assert result.status == FAIL and "no result for TestEndToEnd" in result.reason


def test_harness_skips_replace_what_ran_and_carry_their_reason():
    ran = [Result("vk", "TestGetStatsSummary", FAIL, "401"), Result("vk", "TestGetPods", PASS)]
    out = report.with_policy(ran, {"TestGetStatsSummary": "cannot reach the node"})
    assert out == [Result("vk", "TestGetStatsSummary", SKIP, "cannot reach the node"), Result("vk", "TestGetPods", PASS)]


def test_table_lists_every_spec_with_the_reason_of_skips_and_failures():
    results = [Result("k8s-e2e tier1", "[sig-node] NodeLease NodeLease should have OwnerReferences set", PASS, "", 0.1),
               Result("virtual-kubelet", "TestGetStatsSummary", SKIP, "cannot reach the node"),
               Result("virtual-kubelet", "TestGetPods", FAIL, "404 on /runningpods", 1.0)]
    text = report.table(results)
    lines = text.splitlines()
    assert lines[0].split() == ["suite", "spec", "result"]
    assert any("OwnerReferences set" in line and line.endswith("PASS (0s)") for line in lines)
    assert "↳ cannot reach the node" in text and "↳ 404 on /runningpods" in text
    assert lines[-1] == "1 passed, 1 failed, 1 skipped"


def test_table_shortens_long_spec_names_to_the_width():
    text = report.table([Result("s", "x" * 300, PASS)], width=50)
    assert max(len(line) for line in text.splitlines()) < 80


def test_markdown_escapes_pipes_and_counts():
    md = report.markdown([Result("s", "a | b", SKIP, "why | not")])
    assert "| s | a \\| b | skip | why \\| not |" in md
    assert md.endswith("0 passed, 0 failed, 1 skipped.")


def test_focus_regex_is_go_syntax_and_selects_exactly_the_specs():
    focus = specs.focus_regex(specs.TIER1_SPECS + specs.TIER2_SPECS)
    assert "(?" not in focus  # nothing RE2 would reject
    pattern = re.compile(focus)
    for spec in specs.TIER1_SPECS + specs.TIER2_SPECS:
        assert pattern.search(spec), spec
    assert not pattern.search("[sig-node] Pods should be submitted and removed")  # without its labels: another spec
    assert not pattern.search("[sig-cloud-provider-gcp] [Disruptive] NodeLease NodeLease deletion node lease should be deleted")


def test_every_harness_skip_names_a_known_test_and_says_why():
    for name, reason in {**specs.VK_SKIPS, **specs.K8S_SKIPS}.items():
        assert name in specs.VK_TESTS + specs.TIER1_SPECS + specs.TIER2_SPECS
        assert len(reason) > 40


def test_the_issue_s_tests_are_run_not_skipped():
    run = {"TestGetPods", "TestPodLifecycleGracefulDelete", "TestPodLifecycleForceDelete"}
    assert run <= set(specs.VK_TESTS) and not run & set(specs.VK_SKIPS)
    assert len(specs.TIER1_SPECS) == 15 and len(specs.TIER2_SPECS) == 7


def test_rewrite_policy_only_touches_test_namespaces_and_pod_creation():
    policy, binding = rewrite.policy_objects()
    assert policy["kind"] == "MutatingAdmissionPolicy" and binding["spec"]["policyName"] == policy["metadata"]["name"]
    match = policy["spec"]["matchConstraints"]
    assert match["namespaceSelector"] == {"matchExpressions": [{"key": "e2e-run", "operator": "Exists"}]}
    assert match["resourceRules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]
    patch = policy["spec"]["mutations"][0]["jsonPatch"]["expression"]
    assert rewrite.IMAGE in patch and rewrite.MODEL in patch and "hostPort" not in patch


def _port_base(key: str) -> int:
    """The policy's CEL port expression, evaluated in Python."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-./"
    return 20000 + 4 * (sum((alphabet.index(c) + 2) * (i * i * 131 + i * 17 + 1) for i, c in enumerate(key)) % 3000)


def test_rewrite_ports_differ_for_the_suites_pod_names():
    assert "lists.range(size(variables.key))" in rewrite._BASE and "% 3000" in rewrite._BASE
    keys = [f"pods-{n}/pod-update-{u}" for n, u in ((1234, "2f6c1a9e-0d7e-4b7e-9d7f-5c7a3e1b2c4d"), (1234, "8a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"),
                                                 (5678, "2f6c1a9e-0d7e-4b7e-9d7f-5c7a3e1b2c4d"))]
    keys += [f"vk-e2e/nginx-{t.lower()}-" for t in specs.VK_TESTS]
    bases = [_port_base(k) for k in keys]
    assert len(set(bases)) == len(bases)
    assert all(20000 <= b and b + 3 < 32768 for b in bases)  # below Linux's ephemeral port range
