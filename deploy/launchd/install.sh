#!/usr/bin/env bash
# Install vnode as a launchd job: a wrapper for `vnode service install`, which renders the
# plist (see dev.llmkube.vnode.plist.example) from the `vnode run` flags given here and
# loads it with launchctl bootstrap. Idempotent.
#   deploy/launchd/install.sh --kubeconfig ~/.local/state/vnode/kubeconfig --host-ip 192.168.1.50
#   sudo deploy/launchd/install.sh --system --kubeconfig /Library/Application\ Support/vnode/kubeconfig ...
set -euo pipefail
command -v vnode >/dev/null || { echo "vnode is not on PATH (pip install vnode first)" >&2; exit 1; }
exec vnode service install "$@"
