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
