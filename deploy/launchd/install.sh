#!/usr/bin/env bash
# Install vnode as a per-user launchd agent (runs at login, restarted if it crashes).
# Metal needs a logged-in GUI session, so this is a LaunchAgent, not a LaunchDaemon.
#   deploy/launchd/install.sh [CONFIG]   (default ~/.vnode/vnode.yaml)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
config="${1:-$HOME/.vnode/vnode.yaml}"
vnode="$(command -v vnode || true)"
[ -n "$vnode" ] || { echo "vnode is not on PATH (pip install vnode first)" >&2; exit 1; }
[ -f "$config" ] || { echo "no config at $config: write kubeconfig, node_name and host_ip there" >&2; exit 1; }
logdir="$HOME/Library/Logs/vnode"; mkdir -p "$logdir" "$HOME/Library/LaunchAgents"
plist="$HOME/Library/LaunchAgents/dev.llmkube.vnode.plist"
sed -e "s#@VNODE@#$vnode#" -e "s#@CONFIG@#$config#" -e "s#@LOGDIR@#$logdir#" "$here/dev.llmkube.vnode.plist.in" > "$plist"
plutil -lint "$plist" >/dev/null
launchctl bootout "gui/$(id -u)/dev.llmkube.vnode" 2>/dev/null || true
launchctl bootstrap "gui/$(id -u)" "$plist"
echo "installed: $plist (logs in $logdir/vnode.log)"
