"""A stand-in for llama-server: the benchmarks' echo and bulk servers on the port vnode launched.

vnode's port-forward reaches only the port it launched a pod's server on (pods share the
host's network, so a declared extra containerPort could reach sshd). To measure forwarding
without a model in the way, bench/kubelet_api.py and bench/portforward.py run a Pod whose
node's agent has this script as its `--llama-server`: vnode starts it as it starts
llama-server (`--host <pod ip> --port <port> ... --model <path>`; everything but --host and
--port is ignored) and its readiness probe gets llama-server's answer to GET /health. On
that one port each connection is told apart by its first line:

  "PUT <n>\\n" + n bytes   -> "OK <n>\\n"  (bulk upload: counted, dropped)
  "GET <n>\\n"             -> n bytes      (bulk download)
  "<METHOD> /<path> HTTP/1.x" -> HTTP: 200 {"status":"ok"} for /health, 404 otherwise; closed
  anything else            -> echo: that line and everything after it, back as it comes

Standard library only. The echo and bulk loops are the ones the benchmarks ran before as a
separate server, so the numbers stay comparable.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import sys

BLOCK = memoryview(b"\x5a" * (1 << 20))
BULK = re.compile(rb"^(PUT|GET) (\d+)\n$")
HTTP = re.compile(rb"^([A-Z]+) (/\S*) HTTP/1\.[01]\r?\n$")
FIRST_LINE_LIMIT = 64 * 1024


async def echo(first: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    if first:
        w.write(first)
        await w.drain()
    while (data := await r.read(65536)):
        w.write(data)
        await w.drain()


async def bulk(first: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    # "PUT n\n" + n bytes -> "OK n\n";  "GET n\n" -> n bytes; more requests may follow
    line = first
    while line:
        match = BULK.match(line)
        if match is None:
            return
        op, n = match.group(1), int(match.group(2))
        left = n
        if op == b"PUT":
            while left:
                data = await r.read(min(left, 1 << 20))
                if not data:
                    return
                left -= len(data)
            w.write(b"OK %d\n" % n)
        else:
            while left:
                k = min(left, len(BLOCK))
                w.write(BLOCK[:k])
                left -= k
                await w.drain()
        await w.drain()
        line = await r.readline()


async def http(first: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """llama-server's GET /health (what the readiness probe asks); one request per connection."""
    match = HTTP.match(first)
    assert match is not None
    while await r.readline() not in (b"\r\n", b"\n", b""):  # the headers: nothing in them matters here
        pass
    method, path = match.group(1), match.group(2).split(b"?", 1)[0]
    if path == b"/health" and method in (b"GET", b"HEAD"):
        status, body = b"200 OK", b'{"status":"ok"}'
    else:
        status, body = b"404 Not Found", b'{"error":{"code":404,"message":"File Not Found","type":"not_found_error"}}'
    w.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + (body if method != b"HEAD" else b""))
    await w.drain()


async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        try:
            first = await r.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:  # closed before a whole line: echo what came
            first = exc.partial
        except asyncio.LimitOverrunError:  # a long first line: it can only be echo
            first = await r.read(FIRST_LINE_LIMIT)
        if BULK.match(first):
            await bulk(first, r, w)
        elif HTTP.match(first):
            await http(first, r, w)
        else:
            await echo(first, r, w)
    except (ConnectionError, OSError, ValueError):
        pass
    finally:
        w.close()


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="standin", description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    args, ignored = parser.parse_known_args(argv)
    server = await asyncio.start_server(handle, args.host, args.port, limit=FIRST_LINE_LIMIT)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bench stand-in for llama-server: echo, bulk and GET /health on {args.host}:{args.port} "
          f"(ignoring {' '.join(ignored) or 'nothing'})", flush=True)
    async with server:
        await stop.wait()
    print("stand-in: stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
