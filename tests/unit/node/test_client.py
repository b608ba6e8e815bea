import asyncio

from vnode.kubeclient import ApiError

from vnode.node.client import Backoff, explain, is_transient


def test_backoff_grows_to_cap_and_resets():
    b = Backoff(initial=1, cap=8)
    delays = [b.next_delay() for _ in range(6)]
    assert 0.8 <= delays[0] <= 1.2 and all(d <= 8 * 1.2 for d in delays) and delays[-1] >= 8 * 0.8
    b.reset()
    assert b.next_delay() <= 1.2


def test_explain_401_names_credentials():
    exc = ApiError(401, "Unauthorized", "Unauthorized")
    assert "credentials" in explain(exc, server="https://x:1") and "expired" in explain(exc, server="https://x:1")
    assert is_transient(exc)


def test_4xx_is_not_transient_but_timeouts_are():
    assert not is_transient(ApiError(422, "Invalid", "spec is invalid"))
    assert is_transient(ApiError(503, "ServiceUnavailable", "etcd is down"))
    assert is_transient(asyncio.TimeoutError())
