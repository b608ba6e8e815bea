"""`vnode status`: what this node runs, from the agent's status file, its state directory and
the API server."""
