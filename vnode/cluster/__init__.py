"""A real local Kubernetes control plane, built from Go modules and cached by version.

Used by `vnode cluster up|down` and by the e2e test fixtures: no Docker, no fakes.
"""
