"""PodController.phase_counts: the phase vnode last reported for each pod it has a worker for,
the API server's phase until vnode reported one, every phase present even at zero."""

from types import SimpleNamespace

from vnode.pods.controller import PodController


class Status:
    def __init__(self, reported: dict[str, dict]) -> None:
        self.reported = reported

    def last(self, uid: str) -> dict | None:
        return self.reported.get(uid)


def _worker(uid: str, phase: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(uid=uid, pod={"metadata": {"uid": uid}, "status": {"phase": phase} if phase else {}})


def test_phases_as_vnode_reported_them():
    status = Status({"a": {"phase": "Running"}, "b": {"phase": "Failed"}, "c": {"phase": "Running"}})
    controller = PodController(SimpleNamespace(node_name="mac", status=status))  # type: ignore[arg-type]
    controller.workers = {uid: _worker(uid, "Pending") for uid in "abc"} | {"d": _worker("d", "Running"), "e": _worker("e")}
    assert controller.phase_counts() == {"Pending": 1, "Running": 3, "Succeeded": 0, "Failed": 1, "Unknown": 0}
