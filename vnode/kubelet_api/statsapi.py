"""The Summary of /stats/summary as typed values, in the JSON shape of the kubelet's
statsapi v1alpha1 (k8s.io/kubelet/pkg/apis/stats/v1alpha1).

camelCase keys (two fields spelled otherwise upstream: `ephemeral-storage`,
`process_stats`); a field left None is absent from the JSON, as the kubelet omits what it
does not know. Times are RFC 3339 strings in UTC, seconds precision (metav1.Time).
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Stats(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class CPUStats(_Stats):
    time: str
    usage_nano_cores: int | None = None  # the rate between the last two readings
    usage_core_nano_seconds: int | None = None  # cumulative


class MemoryStats(_Stats):
    time: str
    available_bytes: int | None = None
    usage_bytes: int | None = None
    working_set_bytes: int | None = None
    rss_bytes: int | None = None
    page_faults: int | None = None
    major_page_faults: int | None = None


class FsStats(_Stats):
    time: str
    available_bytes: int | None = None
    capacity_bytes: int | None = None
    used_bytes: int | None = None
    inodes_free: int | None = None
    inodes: int | None = None
    inodes_used: int | None = None


class VolumeStats(FsStats):
    name: str


class RuntimeStats(_Stats):
    image_fs: FsStats | None = None


class ContainerStats(_Stats):
    name: str
    start_time: str
    cpu: CPUStats | None = None
    memory: MemoryStats | None = None
    rootfs: FsStats | None = None
    logs: FsStats | None = None


class PodReference(_Stats):
    name: str
    namespace: str
    uid: str


class ProcessStats(_Stats):
    process_count: int | None = Field(default=None, alias="process_count")


class PodStats(_Stats):
    pod_ref: PodReference
    start_time: str
    containers: list[ContainerStats] = Field(default_factory=list)
    cpu: CPUStats | None = None
    memory: MemoryStats | None = None
    volume: list[VolumeStats] | None = None
    ephemeral_storage: FsStats | None = Field(default=None, alias="ephemeral-storage")
    process_stats: ProcessStats | None = Field(default=None, alias="process_stats")


class NodeStats(_Stats):
    node_name: str
    system_containers: list[ContainerStats] | None = None
    start_time: str
    cpu: CPUStats | None = None
    memory: MemoryStats | None = None
    fs: FsStats | None = None
    runtime: RuntimeStats | None = None


class Summary(_Stats):
    node: NodeStats
    pods: list[PodStats] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)
