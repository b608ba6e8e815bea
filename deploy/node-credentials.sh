#!/usr/bin/env bash
# Issue the node's own credentials (system:node:<name> in system:nodes) through a
# CertificateSigningRequest, approved by you as a cluster admin, and print a kubeconfig.
# vnode never needs more than this: the Node authorizer and NodeRestriction apply to it.
#
#   deploy/node-credentials.sh NODE_NAME > node.kubeconfig
set -euo pipefail
name="${1:?usage: $0 NODE_NAME}"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
openssl ecparam -name prime256v1 -genkey -noout -out "$work/key.pem" 2>/dev/null
openssl req -new -key "$work/key.pem" -subj "/O=system:nodes/CN=system:node:${name}" -out "$work/csr.pem" 2>/dev/null
kubectl delete csr "vnode-${name}" --ignore-not-found >/dev/null
cat <<YAML | kubectl apply -f - >/dev/null
apiVersion: certificates.k8s.io/v1
kind: CertificateSigningRequest
metadata: {name: vnode-${name}}
spec:
  request: $(base64 < "$work/csr.pem" | tr -d '\n')
  signerName: kubernetes.io/kube-apiserver-client-kubelet
  usages: [digital signature, client auth]
YAML
kubectl certificate approve "vnode-${name}" >/dev/null
for _ in $(seq 50); do
  cert="$(kubectl get csr "vnode-${name}" -o jsonpath='{.status.certificate}')"
  [ -n "$cert" ] && break; sleep 0.2
done
[ -n "$cert" ] || { echo "the CSR was approved but not signed (is the controller manager's csrsigning on?)" >&2; exit 1; }
server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
if [ -z "$ca" ]; then
  ca_file="$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')"
  ca="$(base64 < "$ca_file" | tr -d '\n')"
fi
cat <<YAML
apiVersion: v1
kind: Config
clusters: [{name: cluster, cluster: {server: "${server}", certificate-authority-data: ${ca}}}]
users: [{name: "system:node:${name}", user: {client-certificate-data: ${cert}, client-key-data: $(base64 < "$work/key.pem" | tr -d '\n')}}]
contexts: [{name: node, context: {cluster: cluster, user: "system:node:${name}"}}]
current-context: node
YAML
