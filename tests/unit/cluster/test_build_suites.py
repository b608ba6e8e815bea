"""The upstream suites' test binaries (issue 12): wrapper modules pinned as the control plane,
`go test -c` with the other components' flags, cached only after a smoke run."""

from __future__ import annotations

import os
import re
import stat
from importlib import resources
from pathlib import Path

import pytest

from vnode.cluster import build

GOMOD = Path(str(resources.files("vnode.cluster") / "gomod"))


def _replaces(go_mod: str) -> set[str]:
    block = re.search(r"^replace \((.*?)^\)", go_mod, re.S | re.M)
    assert block, "no replace block"
    return {line.strip() for line in block[1].splitlines() if line.strip()}


def test_e2e_wrapper_pins_the_staging_modules_as_the_control_plane():
    e2e = (GOMOD / "e2e" / "go.mod").read_text()
    control_plane = (GOMOD / "kubernetes" / "go.mod").read_text()
    assert f"k8s.io/kubernetes {build.KUBERNETES_VERSION}" in e2e
    assert _replaces(e2e) == _replaces(control_plane)


def test_virtual_kubelet_driver_uses_the_control_planes_client_libraries():
    vk = (GOMOD / "vk-e2e" / "go.mod").read_text()
    minor = build.KUBERNETES_VERSION.split(".")[1]
    assert f"github.com/virtual-kubelet/virtual-kubelet {build.VIRTUAL_KUBELET_VERSION}" in vk
    for module in ("k8s.io/client-go", "k8s.io/api", "k8s.io/apimachinery"):
        assert re.search(rf"{re.escape(module)} v0\.{minor}\.\d+", vk), module
    assert "NewEndToEndTestSuite" in (GOMOD / "vk-e2e" / "driver_test.go").read_text()


def test_cache_key_is_versioned_and_follows_the_wrapper_module(tmp_path, monkeypatch):
    target = build.go_test_suite_dir(build.KUBERNETES_E2E, tmp_path)
    assert target.name.startswith(f"e2e.test-{build.KUBERNETES_VERSION}-")
    files = build._gomod_files("e2e")
    monkeypatch.setattr(build, "_gomod_files", lambda gomod: {**files, "go.mod": files["go.mod"] + b"\n// edited\n"})
    assert build.go_test_suite_dir(build.KUBERNETES_E2E, tmp_path) != target


FAKE_GO = """#!/bin/sh
# go list / go build / go test -c, as far as ensure_go_test_suite uses them
echo "$@" >> "$CALLS"
case "$1" in
  list) echo example.com/dep/a; echo example.com/dep/b ;;
  build) echo example.com/dep/a; echo example.com/dep/b ;;
  test)
    while [ "$#" -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
    printf '#!/bin/sh\\necho "%s"\\n' "$SMOKE" > "$out"; chmod +x "$out" ;;
esac
"""


@pytest.fixture
def fake_go(tmp_path, monkeypatch):
    bin_dir = tmp_path / "gobin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text(FAKE_GO)
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CALLS", str(calls))
    return calls


def test_builds_with_the_components_flags_and_caches_after_the_smoke_run(tmp_path, fake_go, monkeypatch):
    monkeypatch.setenv("SMOKE", "    e2e.go:1: [sig-node] NodeLease NodeLease should have OwnerReferences set")
    root = tmp_path / "cache"
    binary = build.ensure_go_test_suite(build.KUBERNETES_E2E, root=root)
    assert binary == build.go_test_suite_dir(build.KUBERNETES_E2E, root) / "e2e.test" and binary.exists()
    calls = fake_go.read_text().splitlines()
    assert calls[0].startswith("list -deps -test")
    assert calls[1] == "build -v -trimpath example.com/dep/a example.com/dep/b"
    assert calls[2].startswith("test -c -trimpath -ldflags -s -w -X k8s.io/component-base/version.gitVersion=v1.35.4")
    assert calls[2].endswith(" k8s.io/kubernetes/test/e2e")
    # cached: a second call builds nothing
    assert build.ensure_go_test_suite(build.KUBERNETES_E2E, root=root) == binary
    assert len(fake_go.read_text().splitlines()) == 3


def test_a_binary_failing_its_smoke_run_is_not_cached(tmp_path, fake_go, monkeypatch):
    monkeypatch.setenv("SMOKE", "something else")
    root = tmp_path / "cache"
    with pytest.raises(build.BuildError, match="failed its smoke run"):
        build.ensure_go_test_suite(build.VIRTUAL_KUBELET_E2E, root=root)
    assert build.cached_go_test_suite(build.VIRTUAL_KUBELET_E2E, root) is None
    assert not (root / "bin").exists() or not any((root / "bin").iterdir())


def test_a_component_builds_once_with_the_shared_flags(tmp_path, fake_go):
    """ensure_go_component goes through the same build path as the suites: one `go build`
    with the component's ldflags, the wrapper module in place, cached after it."""
    component = build.GoComponent("demo", "v9.9.9", "kubernetes", ("example.com/cmd/demo",))
    root = tmp_path / "cache"
    target = build.ensure_go_component(component, root=root)
    assert target == root / "bin" / "demo-v9.9.9" and build._finished(target)
    [call] = fake_go.read_text().splitlines()
    assert call.startswith("build -v -trimpath -ldflags ") and call.endswith(" example.com/cmd/demo")
    assert build.ensure_go_component(component, root=root) == target
    assert len(fake_go.read_text().splitlines()) == 1, "cached: nothing built again"
