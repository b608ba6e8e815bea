"""Typed values that cross the line between the pod layer and the provider.

The pod layer validates the API server's Pod dict into these models (camelCase aliases
match the Kubernetes JSON, so `PodSpecIn.model_validate(pod["spec"])` just works); the
provider never sees a raw API object. LaunchSpec is what a container becomes on the Mac.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class _Kube(BaseModel):
    """Kubernetes JSON shape: camelCase keys, unknown fields ignored (newer API servers)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class EnvVar(_Kube):
    name: str
    value: str | None = None
    value_from: dict | None = None


class ContainerPort(_Kube):
    container_port: int
    host_port: int | None = None
    name: str | None = None
    protocol: str = "TCP"


class VolumeMount(_Kube):
    name: str
    mount_path: str
    read_only: bool = False
    sub_path: str | None = None


class Probe(_Kube):
    http_get: dict | None = None
    tcp_socket: dict | None = None
    exec: dict | None = None
    grpc: dict | None = None
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3


class ResourceRequirements(_Kube):
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


class ContainerIn(_Kube):
    name: str
    image: str
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    env_from: list[dict] = Field(default_factory=list)
    ports: list[ContainerPort] = Field(default_factory=list)
    volume_mounts: list[VolumeMount] = Field(default_factory=list)
    working_dir: str | None = None
    resources: ResourceRequirements = Field(default_factory=ResourceRequirements)
    startup_probe: Probe | None = None
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    stdin: bool = False
    tty: bool = False


class Volume(_Kube):
    name: str
    host_path: dict | None = None
    empty_dir: dict | None = None
    config_map: dict | None = None
    secret: dict | None = None
    persistent_volume_claim: dict | None = None


class PodSpecIn(_Kube):
    containers: list[ContainerIn]
    init_containers: list[ContainerIn] = Field(default_factory=list)
    volumes: list[Volume] = Field(default_factory=list)
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    termination_grace_period_seconds: int = 30
    host_network: bool = False


class ModelSource(BaseModel):
    """Where a container's model comes from, as its llama-server flags said."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["hf", "url", "path"]
    repo: str | None = None  # hf: "ggml-org/gemma-3-270m-GGUF"
    quant: str | None = None  # hf: "Q4_K_M" (from repo:quant)
    file: str | None = None  # hf: an explicit file in the repo (--hf-file)
    revision: str = "main"
    url: str | None = None  # url: --model-url
    path: str | None = None  # path: absolute host path inside the model store


class LaunchSpec(BaseModel):
    """A container translated into a native process; everything the supervisor needs."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    pod_name: str
    pod_uid: str
    container: str
    image: str = ""  # the container's image as the pod names it (cadvisor's `image` label)
    binary: str  # absolute path of the native server
    args: list[str]  # flags for the binary; the model flag is added once the model is local
    env: dict[str, str]
    workdir: str
    host: str  # address the server binds: the pod IP
    port: int  # the server's port (the containerPort)
    host_ports: list[int] = Field(default_factory=list)
    model: ModelSource | None = None
    host_volumes: dict[str, str] = Field(default_factory=dict)  # hostPath volume name -> host path (in the store)
    ctx_size: int | None = None  # for the memory estimate (None = the model's training context)
    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    kv_unified: bool = False
    n_ubatch: int | None = None  # -ub: the compute buffers (None: llama-server's 512)
    flash_attn: bool = True  # -fa off: attention needs its full score matrix
    swa_full: bool = False  # --swa-full: the sliding-window layers keep a full-size KV cache
    # --cache-ram when set to a size: the prompt cache may grow to it, so it is held for the
    # pod. Its default (8 GiB in recent builds) and -1 (no limit) are not counted: the cache
    # grows only with use, and counting the default would refuse every pod on a small Mac.
    cache_ram_mib: int | None = None
    hf_token: str | None = Field(default=None, repr=False)
