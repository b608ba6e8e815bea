"""Results of the upstream suites: read from their reports, printed as a table, kept in docs/.

Ginkgo's JUnit report (e2e.test --report-dir writes junit_01.xml) and `go test -v` output
(virtual-kubelet's suite) become one list of Result, one per spec the run asked for: a spec
the report does not mention is a failure ("not run"), never silently dropped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass(frozen=True)
class Result:
    suite: str
    spec: str
    status: str  # PASS, FAIL or SKIP
    reason: str = ""  # why it was skipped, or the first line of its failure
    seconds: float | None = None


def _first_line(text: str, limit: int = 240) -> str:
    for line in (text or "").strip().splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""


def _clean_ginkgo_name(name: str) -> str:
    """Ginkgo names a case `[It] <full text> [labels]`; drop the node type, keep the text."""
    name = re.sub(r"^\[(It|BeforeSuite|AfterSuite|SynchronizedBeforeSuite|SynchronizedAfterSuite|ReportAfterSuite)\]\s*", "", name)
    return name


def _matches(case_name: str, spec: str) -> bool:
    case = _clean_ginkgo_name(case_name).strip()
    want = spec.strip()
    return case == want or case.startswith(want + " [") or case.startswith(want + " ")


def parse_junit(xml_text: str, *, suite: str, specs: Sequence[str]) -> list[Result]:
    """One Result per spec in `specs` (full spec texts as `e2e.test --list-tests` prints them).

    A failed BeforeSuite fails every spec that did not run, with its message."""
    root = ET.fromstring(xml_text)
    cases = list(root.iter("testcase"))
    suite_failure = ""
    for case in cases:
        name = case.get("name", "")
        if re.match(r"^\[(Synchronized)?BeforeSuite\]", name):
            bad = case.find("failure") if case.find("failure") is not None else case.find("error")
            if bad is not None:
                suite_failure = "BeforeSuite failed: " + _first_line(bad.get("message") or bad.text or "")
    results = []
    for spec in specs:
        case = next((c for c in cases if _matches(c.get("name", ""), spec)), None)
        if case is None:
            results.append(Result(suite, spec.strip(), FAIL, suite_failure or "not run: the report does not mention this spec"))
            continue
        seconds = float(case.get("time") or 0.0)
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            message = failure.get("message") or failure.text or ""
            results.append(Result(suite, spec.strip(), FAIL, _first_line(message) or failure.get("type", "failed"), seconds))
        elif skipped is not None:
            message = _first_line(skipped.get("message") or skipped.text or "")
            message = re.sub(r"^skipped\s*-?\s*", "", message)
            if not message or case.get("status") == "skipped" and message == "skipped":
                message = "skipped by the suite (no reason given)"
            results.append(Result(suite, spec.strip(), SKIP, message, seconds))
        else:
            results.append(Result(suite, spec.strip(), PASS, "", seconds))
    return results


_GO_RESULT = re.compile(r"^(\s*)--- (PASS|FAIL|SKIP): (\S+) \(([\d.]+)s\)")
_GO_SWITCH = re.compile(r"^=== (?:RUN|CONT|NAME|PAUSE)\s+(\S+)")


def parse_go_test(output: str, *, suite: str, tests: Sequence[str], parent: str = "TestEndToEnd") -> list[Result]:
    """One Result per name in `tests` (methods of a suite run as subtests of `parent`),
    from `go test -v` output. A test's messages are the lines it logged: streamed after its
    `=== RUN`/`=== NAME` line (Go 1.14 and later), or indented under its `--- FAIL` line."""
    messages: dict[str, list[str]] = {}
    found: dict[str, tuple[str, float]] = {}
    current: str | None = None
    under_result: str | None = None
    for line in output.splitlines():
        switch = _GO_SWITCH.match(line)
        result = _GO_RESULT.match(line)
        if switch:
            current, under_result = switch[1], None
        elif result:
            found[result[3]] = (result[2], float(result[4]))
            under_result = result[3]
        elif line.startswith("    ") and line.strip():
            owner = under_result or current
            if owner:
                messages.setdefault(owner, []).append(line.strip())
        elif line.strip() in ("PASS", "FAIL") or line.startswith(("ok ", "FAIL\t")):
            current = under_result = None
    results = []
    for test in tests:
        name = f"{parent}/{test}"
        got = found.get(name)
        if got is None:
            parent_messages = [m for m in messages.get(parent, []) if _message_text([m])]
            if parent in found and parent_messages:
                why = f"not run: {parent} failed: {_message_text(parent_messages)}"
            elif parent not in found:
                why = f"not run: no result for {parent} (did the binary crash or time out?)"
            else:
                why = "not run"
            results.append(Result(suite, test, FAIL, why))
            continue
        status, seconds = got
        text = _message_text(messages.get(name, []))
        if status == "PASS":
            results.append(Result(suite, test, PASS, "", seconds))
        elif status == "SKIP":
            results.append(Result(suite, test, SKIP, text or "skipped", seconds))
        else:
            results.append(Result(suite, test, FAIL, text or "failed", seconds))
    return results


def _message_text(messages: Iterable[str]) -> str:
    """The test's own message, without the `file.go:123:` prefix go test puts on t.Log lines."""
    useful = []
    for message in messages:
        message = re.sub(r"^[\w./-]+\.go:\d+:\s*", "", message)
        if message and message not in ("True", "False", "Unknown"):
            useful.append(message)
    # The failure is normally the last message (t.Fatal); t.Log lines come before it.
    return _first_line(useful[-1]) if useful else ""


def with_policy(results: Iterable[Result], skips: dict[str, str]) -> list[Result]:
    """Results with the harness's own skips (spec -> reason) in place of whatever ran."""
    out = []
    for result in results:
        reason = skips.get(result.spec)
        out.append(Result(result.suite, result.spec, SKIP, reason, result.seconds) if reason else result)
    return out


def counts(results: Sequence[Result]) -> dict[str, int]:
    return {status: sum(1 for r in results if r.status == status) for status in (PASS, FAIL, SKIP)}


def table(results: Sequence[Result], *, width: int = 100) -> str:
    """A plain-text table: suite, spec, result, and the reason of every skip and failure."""
    if not results:
        return "(no results)"
    suite_w = max(len("suite"), *(len(r.suite) for r in results))
    spec_w = min(width, max(len("spec"), *(len(r.spec) for r in results)))
    lines = [f"{'suite':<{suite_w}}  {'spec':<{spec_w}}  result", f"{'-' * suite_w}  {'-' * spec_w}  ------"]
    for r in results:
        spec = r.spec if len(r.spec) <= spec_w else r.spec[: spec_w - 1] + "…"
        secs = f" ({r.seconds:.0f}s)" if r.seconds is not None and r.status != SKIP else ""
        lines.append(f"{r.suite:<{suite_w}}  {spec:<{spec_w}}  {r.status.upper()}{secs}")
        if r.reason:
            lines.append(f"{'':<{suite_w}}  ↳ {r.reason}")
    c = counts(results)
    lines.append(f"{c[PASS]} passed, {c[FAIL]} failed, {c[SKIP]} skipped")
    return "\n".join(lines)


def markdown(results: Sequence[Result]) -> str:
    """The same table as Markdown (for docs/conformance.md)."""
    out = ["| suite | spec | result | reason |", "|---|---|---|---|"]
    for r in results:
        secs = f" ({r.seconds:.0f} s)" if r.seconds is not None and r.status != SKIP else ""
        spec = r.spec.replace("|", "\\|")
        reason = r.reason.replace("|", "\\|")
        out.append(f"| {r.suite} | {spec} | {r.status}{secs} | {reason} |")
    c = counts(results)
    out.append("")
    out.append(f"{c[PASS]} passed, {c[FAIL]} failed, {c[SKIP]} skipped.")
    return "\n".join(out)
