"""Helpers shared by unit and e2e tests (stand-in servers and the like)."""
