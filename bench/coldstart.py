#!/usr/bin/env python3
"""Cold set-up: what a new user's first `make demo` costs, on an empty cache.

Every cache starts empty — vnode's binary cache, Go's module and build caches, pip's
cache and a fresh virtualenv — so the numbers are those of a fresh machine. Steps, each
timed: venv + `pip install -e .[test,demo]`; each Go component; llama-server (all CPU
variants, smoke run included); `vnode demo` (control plane up, node joined, Gemma
answering). Prints the table and writes JSON (with the CPU model and core count) to
bench/results/. Takes 30-60 minutes on 2 cores; nothing is asserted.

    python bench/coldstart.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import RESULTS, machine  # noqa: E402

STEPS = [
    ("venv + pip install", None),
    ("kubernetes (apiserver, controller-manager, scheduler, kubectl)", "KUBERNETES"),
    ("etcd", "ETCD"),
    ("metrics-server", "METRICS_SERVER"),
    ("llama-server (all CPU variants + smoke run)", "LLAMA"),
    ("vnode demo (cluster up, node Ready, Gemma answers)", "DEMO"),
]


def timed(cmd: list[str], *, env: dict[str, str], log: Path) -> tuple[float, int]:
    started = time.monotonic()
    with open(log, "ab") as out:
        code = subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.monotonic() - started, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="work in DIR and keep it (default: a temporary directory, removed)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="vnode-cold-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VNODE_CACHE_DIR=str(work / "cache"), GOCACHE=str(work / "go-build"),
               GOMODCACHE=str(work / "go-mod"), PIP_CACHE_DIR=str(work / "pip"), PYTHONUNBUFFERED="1")
    log = work / "coldstart.log"
    venv = work / "venv"
    py = str(venv / "bin" / "python")
    results: list[dict] = []
    code = 0
    for title, what in STEPS:
        if what is None:
            seconds, code = timed([sys.executable, "-m", "venv", str(venv)], env=env, log=log)
            if code == 0:
                more, code = timed([py, "-m", "pip", "install", "--quiet", "-e", ".[test,demo]"], env=env, log=log)
                seconds += more
        elif what == "DEMO":
            seconds, code = timed([py, "-m", "vnode", "demo", "--dir", str(work / "cluster")], env=env, log=log)
            subprocess.run([py, "-m", "vnode", "cluster", "down", "--dir", str(work / "cluster")], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            call = ("ensure_llama_server()" if what == "LLAMA" else f"ensure_go_component({what})")
            seconds, code = timed([py, "-c", f"from vnode.cluster.build import *; {call}"], env=env, log=log)
        results.append({"step": title, "seconds": round(seconds, 1), "ok": code == 0})
        print(f"{title:<62} {seconds / 60:6.1f} min  {'ok' if code == 0 else f'FAILED (exit {code}), see {log}'}", flush=True)
        if code != 0:
            break
    total = sum(r["seconds"] for r in results)
    print(f"{'total':<62} {total / 60:6.1f} min")
    info = machine()
    print(f"machine: {info['cpu_model']}, {info['cpus']} cores, {info['memory_gib']} GiB")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"coldstart-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": info, "steps": results, "total_seconds": round(total, 1)}, indent=2))
    print(f"wrote {out}")
    if args.keep is None:
        # Go makes its module cache read-only; its own command removes it.
        subprocess.run(["go", "clean", "-modcache"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
