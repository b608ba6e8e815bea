"""The pod controller: watches the pods bound to this node and gives each a worker.

It lists and watches only `fieldSelector=spec.nodeName=<node>` (all NodeRestriction
allows), resumes the watch from the last resourceVersion and lists again only on 410 Gone
(node/watch.py), and hands every event to the pod's worker without waiting on it, so a slow
model download never stalls the watch. Every copy of a pod it sees goes to the status
manager too, which writes vnode's status back where the API server's differs. On start it
adopts the servers an earlier agent left running and stops those whose pod is gone.
"""

from __future__ import annotations

import asyncio
import logging

from vnode.node.watch import Reflector
from vnode.pods.worker import PodContext, PodWorker
from vnode.provider.supervisor import Instance

log = logging.getLogger(__name__)

TERMINAL = ("Succeeded", "Failed")
ORPHAN_GRACE = 30.0


class PodController:
    def __init__(self, ctx: PodContext) -> None:
        self.ctx = ctx
        self.workers: dict[str, PodWorker] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self._adopted: dict[str, dict[str, Instance]] = {}
        self.synced = asyncio.Event()
        self.watch: Reflector | None = None  # made by run()

    async def run(self) -> None:
        for inst in self.ctx.supervisor.adopt():
            self._adopted.setdefault(inst.pod_uid, {})[inst.container] = inst
        if self._adopted:
            log.info("found %d pod(s) from an earlier agent", len(self._adopted))
        self.watch = Reflector(self.ctx.api, "/api/v1/pods", selector=f"spec.nodeName={self.ctx.node_name}", what="pods",
                               on_list=self._listed, on_event=self._event)
        try:
            await self.watch.run()
        finally:
            # Agent shutdown: workers stop watching, servers keep running for the next agent.
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def resync(self) -> None:
        """After an outage (the Lease renews again): watch again from the last version, so
        what others changed meanwhile (the lifecycle controller's Ready=False) arrives now,
        not when a watch hung on a broken connection times out."""
        if self.watch is not None:
            self.watch.restart()

    def watch_failing_for(self) -> float:
        """Seconds the pod list/watch has been failing (0 while it works): /healthz/syncloop."""
        return self.watch.failing_for() if self.watch is not None else 0.0

    async def _listed(self, items: list[dict]) -> None:
        pods = {p["metadata"]["uid"]: p for p in items}
        for pod in pods.values():
            self.dispatch(pod)
        for uid in list(self.workers):
            if uid not in pods:
                self.workers[uid].object_deleted()
        self.ctx.status.retain(set(pods))
        if not self.synced.is_set():
            await self._stop_orphans(set(pods))
            self.synced.set()

    def _event(self, kind: str, pod: dict) -> None:
        if kind == "DELETED":
            worker = self.workers.get(pod["metadata"]["uid"])
            if worker is not None:
                worker.object_deleted()
            self.ctx.status.forget(pod["metadata"]["uid"])
            return
        self.dispatch(pod)

    def phase_counts(self) -> dict[str, int]:
        """Pods with a worker by phase, as vnode last reported it (else as the API server
        had it): what /metrics shows, without the collector reading worker internals."""
        counts = dict.fromkeys(("Pending", "Running", "Succeeded", "Failed", "Unknown"), 0)
        for worker in list(self.workers.values()):
            status = self.ctx.status.last(worker.uid) or worker.pod.get("status") or {}
            phase = status.get("phase") or "Pending"
            counts[phase] = counts.get(phase, 0) + 1
        return counts

    def running_instances(self) -> list[Instance]:
        """The container instances running now, one per container: what the kubelet API's
        stats read (the narrow view; no worker internals leave this layer)."""
        found = []
        for worker in list(self.workers.values()):
            for runner in worker.runners.values():
                inst = runner.instance
                if inst is not None and self.ctx.supervisor.alive(inst):
                    found.append(inst)
        return found

    def active_pods(self) -> list[dict]:
        """The pods that may still run here (not failed, finished or being deleted): the
        eviction manager's candidates, as the kubelet's active pods are."""
        return [w.pod for w in list(self.workers.values())
                if not w.terminal and w.failed is None and not w.deleting.is_set() and not w.done.is_set()]

    async def evict(self, pod_uid: str, *, message: str, grace: float) -> bool:
        """Evict one pod (PodWorker.evict); False if it is no longer active."""
        worker = self.workers.get(pod_uid)
        if worker is None or worker.terminal or worker.failed is not None or worker.deleting.is_set():
            return False
        await worker.evict(message, grace=grace)
        return True

    def dispatch(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if worker is not None:
            worker.update(pod)
            self.ctx.status.observe(pod)
            return
        phase = (pod.get("status") or {}).get("phase")
        if phase in TERMINAL and not pod["metadata"].get("deletionTimestamp"):
            return  # finished before; nothing runs, nothing to do until it is deleted
        worker = PodWorker(self.ctx, pod, adopted=self._adopted.pop(uid, None), terminal=phase in TERMINAL)
        worker.update(pod)
        self.ctx.status.observe(pod)
        self.workers[uid] = worker
        task = asyncio.create_task(self._run_worker(worker), name=f"pod {worker.ref}")
        self._tasks[uid] = task

    async def _run_worker(self, worker: PodWorker) -> None:
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker of pod %s failed", worker.ref)
        finally:
            self.workers.pop(worker.uid, None)
            self._tasks.pop(worker.uid, None)
            self.ctx.status.forget(worker.uid)  # nothing of a pod without a worker is written

    async def _stop_orphans(self, live: set[str]) -> None:
        """Servers an earlier agent started for pods that no longer exist: stop them."""
        for uid in [u for u in self._adopted if u not in live]:
            for inst in self._adopted.pop(uid).values():
                if self.ctx.supervisor.alive(inst):
                    log.info("stopping orphaned server of deleted pod %s/%s (pid %d)", inst.namespace, inst.pod_name, inst.shim_pid)
                    await self.ctx.supervisor.stop(inst, grace=ORPHAN_GRACE)
            await self.ctx.supervisor.remove_pod(uid)
