"""`vnode join`: a Mac becomes a node of an existing cluster from a bootstrap token, as
`kubeadm join` makes a Linux machine one (discovery.py, tls_bootstrap.py, command.py).
Nothing here runs inside the agent: it ends with a kubeconfig `vnode run` uses.
"""
