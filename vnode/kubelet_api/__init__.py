"""The kubelet-compatible HTTPS API (logs, exec, attach, port-forward, stats)."""
