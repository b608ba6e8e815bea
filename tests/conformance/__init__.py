"""The upstream conformance suites (Kubernetes e2e, virtual-kubelet's e2e) against a vnode node."""
