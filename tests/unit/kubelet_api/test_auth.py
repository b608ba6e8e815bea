from vnode.kubelet_api.auth import User, subresources, user_from_certificate


def test_fine_grained_subresources_with_proxy_fallback():
    assert subresources("/pods") == ("pods", "proxy")
    assert subresources("/runningpods/") == ("pods", "proxy")
    assert subresources("/healthz/ping") == ("healthz", "proxy")
    assert subresources("/configz") == ("configz", "proxy")
    assert subresources("/stats/summary") == ("stats", "proxy")
    assert subresources("/metrics/resource") == ("metrics", "proxy")
    assert subresources("/logs/vnode.log") == ("log", "proxy")
    assert subresources("/containerLogs/ns/p/c") == ("proxy",)
    assert subresources("/exec/ns/p/c") == ("proxy",)


def test_certificate_subject_maps_to_user_and_groups():
    cert = {"subject": ((("organizationName", "system:masters"),), (("commonName", "kube-apiserver-kubelet-client"),))}
    assert user_from_certificate(cert) == User(name="kube-apiserver-kubelet-client", groups=("system:masters",))
    assert user_from_certificate(None) is None
    assert user_from_certificate({"subject": ()}) is None
