"""The Node object: registration, capacity and memory budget, conditions, Lease heartbeat.

Talks to the API server only with the node's own credentials; knows nothing of processes.
"""
