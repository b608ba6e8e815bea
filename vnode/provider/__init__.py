"""The Mac side: host facts, and (later) translating pods into supervised processes.

Provider code never imports Kubernetes models; the node and pod layers hand it plain data.
"""
