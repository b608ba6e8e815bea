#!/usr/bin/env python3
"""Scrape cost of the kubelet's usage endpoints: /metrics/resource and /stats/summary (and,
for comparison, /metrics/cadvisor and /stats/summary?only_cpu_and_memory=true), against
1, 10, 100 ... running containers.

Each container is a real process (`sleep`), one pod each, with the files the summary walks:
a pid file, a log of --log-kib KiB and its rotation, a sandbox with a file in it, and a
hostPath model volume (one shared store directory holding a --model-mib MiB file). The
Instances point at them exactly as the supervisor's would, and the real handlers serve
them from an aiohttp server on loopback (no TLS, no authorization: the endpoint's own
cost). For each size, --runs requests per endpoint (after a warm-up), interleaved,
one at a time over one keep-alive connection; reported: wall time per request (p50, p99,
max), CPU milliseconds of this process per request (handler, its thread, the client) and
the event loop's worst lag during the requests (a 1 ms ticker: what other kubelet API
clients would wait; reading and rendering run in a thread, so this is mostly the GIL).

Before each size it waits up to --wait-quiet s for other processes to go quiet (as
bench/pods.py does) and records how long it waited. Prints the table and writes JSON to
bench/results/. No assertions: numbers are for people and for trend lines. Every process
started is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from pods import RESULTS, machine, summary, wait_quiet  # noqa: E402 - bench/pods.py: shared result helpers
from vnode.kubelet_api import cadvisor_metrics, resource_metrics, stats_summary  # noqa: E402
from vnode.kubelet_api.context import CTX_KEY, ApiContext  # noqa: E402
from vnode.provider.diskusage import dir_usage  # noqa: E402
from vnode.provider.supervisor import Instance  # noqa: E402

ENDPOINTS = {
    "/metrics/resource": "/metrics/resource",
    "/stats/summary": "/stats/summary",
    "/stats/summary?only_cpu_and_memory=true": "/stats/summary?only_cpu_and_memory=true",
    "/metrics/cadvisor": "/metrics/cadvisor",
}


def make_pods(work: Path, n: int, *, store: Path, log_kib: int) -> tuple[list[Instance], list[subprocess.Popen]]:
    """n running `sleep` processes, each a one-container pod with the supervisor's file layout."""
    sleep = shutil.which("sleep") or "sleep"
    procs: list[subprocess.Popen] = []
    instances = []
    for i in range(n):
        uid = f"00000000-0000-4000-8000-{i:012d}"
        cdir, sandbox = work / "pods" / uid / "containers" / "server", work / "pods" / uid / "sandbox"
        cdir.mkdir(parents=True)
        sandbox.mkdir(parents=True)
        (sandbox / "prompt-cache.bin").write_bytes(b"s" * 4096)
        for name in ("0.log", "0.log.1"):
            (cdir / name).write_bytes(b"l" * (log_kib * 1024))
        proc = subprocess.Popen([sleep, "3600"], stdin=subprocess.DEVNULL)
        procs.append(proc)
        (cdir / "0.pid.json").write_text(json.dumps({"pid": proc.pid}))
        instances.append(Instance(
            pod_uid=uid, namespace="bench", pod_name=f"gemma-{i}", container="server", instance=0, shim_pid=proc.pid,
            shim_start=0.0, started_at=time.time(), port=8080 + i, host="127.0.0.1", log_path=str(cdir / "0.log"),
            exit_path=str(cdir / "0.exit.json"), pid_path=str(cdir / "0.pid.json"), args=[],
            image="ghcr.io/ggml-org/llama.cpp:server", sandbox=str(sandbox), volumes={"models": str(store)},
        ))
    return instances, procs


def stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()


async def lag_ticker(worst: list[float], stop: asyncio.Event) -> None:
    """Worst extra delay of a 1 ms sleep: how long the loop was kept from other work."""
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], time.perf_counter() - t0 - 0.001)


async def measure(instances: list[Instance], *, work: Path, store: Path, runs: int, warmup: int) -> dict:
    ctx = ApiContext(node_name="bench-node", pods=None, supervisor=None, log_dir=None, running=lambda: instances,
                     state_dir=work, store_usage=lambda: dir_usage(store))
    app = web.Application()
    app[CTX_KEY] = ctx
    resource_metrics.add_routes(app)
    stats_summary.add_routes(app)
    cadvisor_metrics.add_routes(app)
    walls: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
    cpus: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
    lags: dict[str, float] = {k: 0.0 for k in ENDPOINTS}
    sizes: dict[str, int] = {}
    async with TestClient(TestServer(app)) as client:
        for i in range(warmup + runs):
            for name, path in ENDPOINTS.items():
                worst, stop = [0.0], asyncio.Event()
                ticker = asyncio.create_task(lag_ticker(worst, stop))
                await asyncio.sleep(0.005)  # let the ticker start
                worst[0] = 0.0
                c0, t0 = time.process_time(), time.perf_counter()
                resp = await client.get(path)
                body = await resp.read()
                t1, c1 = time.perf_counter(), time.process_time()
                stop.set()
                await ticker
                if resp.status != 200:
                    raise RuntimeError(f"{path}: HTTP {resp.status}: {body[:200]!r}")
                if i >= warmup:
                    walls[name].append((t1 - t0) * 1000)
                    cpus[name].append((c1 - c0) * 1000)
                    lags[name] = max(lags[name], worst[0] * 1000)
                    sizes[name] = len(body)
    return {name: {"wall_ms": summary(walls[name]), "cpu_ms": summary(cpus[name]), "max_loop_lag_ms": lags[name],
                   "body_bytes": sizes[name]} for name in ENDPOINTS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,500", help="comma-separated container counts")
    parser.add_argument("--runs", type=int, default=40, help="requests per endpoint per size")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--log-kib", type=int, default=64, help="size of each log file")
    parser.add_argument("--model-mib", type=int, default=16, help="size of the model file in the shared store")
    parser.add_argument("--wait-quiet", type=float, default=20.0, help="at most this many seconds to wait for a quiet machine")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="vnode-bench-scrape-") as tmp:
        store = Path(tmp) / "store"
        store.mkdir()
        (store / "gemma-3-270m-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * (args.model_mib << 20))
        for n in sizes:
            work = Path(tmp) / f"state-{n}"
            instances, procs = make_pods(work, n, store=store, log_kib=args.log_kib)
            try:
                time.sleep(0.2)  # the sleeps have exec'd
                waited = wait_quiet(args.wait_quiet)
                got = asyncio.run(measure(instances, work=work, store=store, runs=args.runs, warmup=args.warmup))
            finally:
                stop_all(procs)
            results.append({"containers": n, "waited_for_quiet_s": round(waited, 1), "endpoints": got})
            print(f"\n{n} container(s) (waited {waited:.1f}s for a quiet machine)")
            print(f"  {'endpoint':<42} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'cpu p50':>8} {'loop lag':>9} {'bytes':>9}")
            for name, r in got.items():
                w = r["wall_ms"]
                print(f"  {name:<42} {w['median']:8.2f} {w['p99']:8.2f} {w['max']:8.2f} {r['cpu_ms']['median']:8.2f}"
                      f" {r['max_loop_lag_ms']:9.2f} {r['body_bytes']:9d}", flush=True)
    info = machine()
    print(f"\nmachine: {info['cpu_model']}, {info['cpus']} cores, {info['memory_gib']} GiB")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"scrape-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": info, "runs": args.runs, "log_kib": args.log_kib, "model_mib": args.model_mib,
                               "sizes": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
