#!/usr/bin/env bash
# Stop and remove the vnode launchd agent. The Node object stays in the cluster (it goes
# NotReady); delete it with `kubectl delete node NAME` if the Mac leaves for good.
set -euo pipefail
launchctl bootout "gui/$(id -u)/dev.llmkube.vnode" 2>/dev/null || true
rm -f "$HOME/Library/LaunchAgents/dev.llmkube.vnode.plist"
echo "uninstalled"
