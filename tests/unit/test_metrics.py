from prometheus_client import generate_latest

from vnode.metrics import registry


class FakeStore:
    def progress(self):
        return {"ggml-org/gemma-3-270m-GGUF:Q4_K_M": (100, 400)}


class FakePods:
    workers = {}


def test_download_progress_is_exported():
    text = generate_latest(registry(models=FakeStore(), pods=FakePods())).decode()
    assert 'vnode_model_download_bytes{model="ggml-org/gemma-3-270m-GGUF:Q4_K_M"} 100.0' in text
    assert 'vnode_model_download_size_bytes{model="ggml-org/gemma-3-270m-GGUF:Q4_K_M"} 400.0' in text
    assert "vnode_pod_workers 0.0" in text


def test_serving_certificate_expiry_is_exported_once_known():
    import datetime as dt

    from vnode.node.certs import ServingState

    serving = ServingState()
    assert "vnode_serving_certificate_expiry" not in generate_latest(registry(models=FakeStore(), pods=FakePods(), serving=serving)).decode()
    serving.not_after = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    text = generate_latest(registry(models=FakeStore(), pods=FakePods(), serving=serving)).decode()
    assert "vnode_serving_certificate_expiry_timestamp_seconds 1.7987616e+09" in text
