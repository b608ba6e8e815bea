#!/usr/bin/env bash
# kind on this Mac (Docker Desktop) with this Mac joined to it as a vnode node.
# Not exercised in CI: the build machine cannot pull kind's node image. Idempotent.
#
#   deploy/kind/up.sh      # env: KIND_CLUSTER (vnode), NODE_NAME (hostname), HOST_IP, STATE_DIR
#   kubectl --context kind-vnode apply -f manifests/llama-server-deployment.yaml
#   vnode service uninstall && kind delete cluster --name vnode      # undo
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"; repo="$(cd "$here/../.." && pwd)"
name="${KIND_CLUSTER:-vnode}"; cp="${name}-control-plane"; ctx="kind-${name}"
node="${NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}"
state="${STATE_DIR:-$HOME/.local/state/vnode}"
for tool in docker kind kubectl curl vnode; do
  command -v "$tool" >/dev/null || { echo "$tool is not on PATH" >&2; exit 1; }
done
# The Node's InternalIP: an address of this Mac the kind node can reach. Not 127.0.0.1
# (Endpoints refuse loopback), not host.docker.internal (a name inside Docker's VM, not an
# address of the Mac vnode can listen on): the LAN address on the default route.
if [ -z "${HOST_IP:-}" ]; then
  iface="$(route -n get default 2>/dev/null | awk '/interface:/ {print $2}')"
  HOST_IP="$(ipconfig getifaddr "${iface:-en0}" 2>/dev/null || true)"
fi
[ -n "${HOST_IP:-}" ] || { echo "set HOST_IP to this Mac's LAN address (ipconfig getifaddr en0)" >&2; exit 1; }
k() { kubectl --context "$ctx" "$@"; }

kind get clusters 2>/dev/null | grep -qx "$name" || kind create cluster --name "$name" --config "$here/cluster.yaml"
server="$(k config view --minify -o jsonpath='{.clusters[0].cluster.server}')"    # https://127.0.0.1:6443
# kubeadm has these grants under kubeadm:* names already; applying them again is harmless.
k apply -f "$repo/manifests/bootstrap-rbac.yaml" -f "$repo/manifests/node-client-rotation-rbac.yaml"
# cluster-info names the API server as the kind node sees it (https://<cluster>-control-plane:6443),
# and `vnode join`, like `kubeadm join`, continues with that name, which the Mac cannot resolve.
# Name the address the Mac uses, before the token is made, and give the bootstrapsigner a moment
# to sign the new content.
info="$(k -n kube-public get configmap cluster-info -o yaml)"
if ! grep -q "server: ${server}\$" <<<"$info"; then
  sed "s#server: https://.*#server: ${server}#" <<<"$info" | k replace -f - >/dev/null
  sleep 3
fi
line="$(docker exec "$cp" kubeadm token create --ttl 1h --description "deploy/kind/up.sh" --print-join-command)"
token="$(awk '{for (i = 1; i < NF; i++) if ($i == "--token") print $(i + 1)}' <<<"$line")"
hash="$(awk '{for (i = 1; i < NF; i++) if ($i == "--discovery-token-ca-cert-hash") print $(i + 1)}' <<<"$line")"

echo "+ vnode join $server --token <1h token> --discovery-token-ca-cert-hash $hash --node-name $node --host-ip $HOST_IP"
# Installs the LaunchAgent running `vnode run` (with the cluster CA as --client-ca-file: the
# API server calls the kubelet API with a certificate from kubeadm's CA).
vnode join "$server" --token "$token" --discovery-token-ca-cert-hash "$hash" \
  --node-name "$node" --host-ip "$HOST_IP" --state-dir "$state"
command -v launchctl >/dev/null || exit 0    # no launchd: join printed the `vnode run` line

# kubectl logs/exec/port-forward need the kubelet-serving certificate vnode asks for: approve it.
for _ in $(seq 60); do
  code="$(curl -sk -o /dev/null -w '%{http_code}' --max-time 3 "https://${HOST_IP}:10250/healthz" || true)"
  [ "$code" != "000" ] && break    # serving
  csr="$(k get csr --no-headers 2>/dev/null | awk -v u="system:node:$node" \
    '$3 == "kubernetes.io/kubelet-serving" && $4 == u && $NF == "Pending" {print $1}')"
  [ -z "$csr" ] || k certificate approve $csr
  sleep 2
done
k wait --for=condition=Ready "node/$node" --timeout=120s
docker exec "$cp" curl -sk --max-time 5 -o /dev/null "https://${HOST_IP}:10250/healthz" \
  || echo "warning: the kind node cannot reach ${HOST_IP}:10250 (macOS firewall? see docs/pods.md#security)" >&2
echo "joined: kubectl --context $ctx apply -f $repo/manifests/llama-server-deployment.yaml"
