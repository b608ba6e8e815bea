"""The kubelet API's read-only view of the pod layer (kubelet_api.context.ContainerSource).

The one place that reads pod workers for exec, attach, logs and port-forward, so those
handlers never touch worker or runner attributes. Reads only; writes nothing.
"""

from __future__ import annotations

from pathlib import Path

from vnode.kubelet_api.context import Launch
from vnode.pods.env import command_env


class _Container:
    def __init__(self, worker, name: str, supervisor) -> None:
        self._w, self._sup, self.name = worker, supervisor, name
        self.pod_ref, self.pod_uid = worker.ref, worker.uid

    def _runner(self):
        return self._w.runners.get(self.name)

    def launch(self) -> Launch | None:
        runner = self._runner()
        spec = runner.launch if runner is not None else None
        if spec is None:
            return None
        return Launch(host=spec.host, port=spec.port, workdir=spec.workdir,
                      env=command_env(spec, self._w.pod["metadata"]["name"]))

    def instance(self) -> int | None:
        runner = self._runner()
        inst = runner.instance if runner is not None else None
        return inst.instance if inst is not None else None

    def restart_count(self) -> int:
        view = self._w.views.get(self.name)
        return view.restart_count if view is not None else 0

    def waiting_reason(self) -> str:
        view = self._w.views.get(self.name)
        return ((view.state.get("waiting") or {}).get("reason") if view is not None else None) or "not started"

    def log_path(self, instance: int) -> Path:
        return self._sup.log_path(self.pod_uid, self.name, instance)

    def alive(self, instance: int) -> bool:
        runner = self._runner()
        inst = runner.instance if runner is not None else None
        return inst is not None and inst.instance == instance and self._sup.alive(inst)


class _Pod:
    def __init__(self, worker, supervisor) -> None:
        self._w, self._sup = worker, supervisor
        self.pod_ref, self.pod_uid = worker.ref, worker.uid

    def container(self, name: str) -> _Container | None:
        if name not in self._w.views:
            return None
        return _Container(self._w, name, self._sup)

    def launches(self) -> list[Launch]:
        out = []
        for name in list(self._w.runners):
            launch = _Container(self._w, name, self._sup).launch()
            if launch is not None:
                out.append(launch)
        return out


class PodContainers:
    """ContainerSource over a PodController's workers and the Supervisor."""

    def __init__(self, pods, supervisor) -> None:
        self._pods, self._sup = pods, supervisor

    def find_pod(self, namespace: str, name: str) -> _Pod | None:
        for worker in list(self._pods.workers.values()):
            meta = worker.pod["metadata"]
            if meta["namespace"] == namespace and meta["name"] == name:
                return _Pod(worker, self._sup)
        return None
