"""vnode: an Apple Silicon Mac as a Kubernetes node.

Pods bound to the node run as native, supervised `llama-server` processes with full
Metal access; the agent serves a kubelet-compatible API so ordinary kubectl works.
"""

__version__ = "0.1.0"
