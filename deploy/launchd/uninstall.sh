#!/usr/bin/env bash
# Stop and remove the vnode launchd job (`vnode service uninstall`; --system for the
# LaunchDaemon). The Node object stays in the cluster (it goes NotReady); delete it with
# `kubectl delete node NAME` if the Mac leaves for good.
set -euo pipefail
command -v vnode >/dev/null || { echo "vnode is not on PATH" >&2; exit 1; }
exec vnode service uninstall "$@"
