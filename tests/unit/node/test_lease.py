import datetime as dt

from vnode.node.lease import lease_body, micro_time


def test_lease_body_is_owned_by_the_node():
    now = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.timezone.utc)
    body = lease_body(node_name="mac", node_uid="uid-1", duration=40, now=now, resource_version="7")
    assert body["spec"] == {"holderIdentity": "mac", "leaseDurationSeconds": 40, "renewTime": "2026-01-02T03:04:05.600000Z"}
    assert body["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Node", "name": "mac", "uid": "uid-1"}
    assert body["metadata"]["resourceVersion"] == "7"
    assert micro_time(now).endswith("Z")
