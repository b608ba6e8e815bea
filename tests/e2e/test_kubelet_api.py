"""The kubelet API on the Mac node, reached the way users reach any kubelet: through the
real API server with the real kubectl, and directly with tokens and certificates."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import psutil
import pytest

from .conftest import kubelet_port, wait_for
from .test_pods import NODE, apply, complete, deployment, mac, ns, pod_ready, server_pid  # noqa: F401 - fixtures

PORT = 8110


@pytest.fixture(scope="module")
def served(cluster, mac):
    """One Gemma pod for the module's log tests."""
    name = "logs-e2e"
    cluster.kubectl("create", "namespace", name)
    apply(cluster, name, deployment("talker", port=PORT))
    pod = wait_for(lambda: pod_ready(cluster, name, "talker"), timeout=240, what="talker Ready")
    yield name, pod["metadata"]["name"]
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def kubelet_get(cluster, path: str, *, token: str | None = None) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=f"{cluster.state.directory}/pki/ca.crt")
    req = urllib.request.Request(f"https://{cluster.state.host.ns_ip}:{kubelet_port(NODE)}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_kubectl_logs_options(cluster, served):
    ns_name, pod = served
    full = cluster.kubectl("logs", "-n", ns_name, pod).stdout
    assert "listening" in full and len(full.splitlines()) > 3
    assert cluster.kubectl("logs", "-n", ns_name, pod, "-c", "server").stdout == full
    tail = cluster.kubectl("logs", "-n", ns_name, pod, "--tail=3").stdout.splitlines()
    assert tail == full.splitlines()[-3:]
    stamped = cluster.kubectl("logs", "-n", ns_name, pod, "--timestamps", "--tail=2").stdout.splitlines()
    assert all(line[:4].isdigit() and "T" in line.split(" ")[0] and line.split(" ")[0].endswith("Z") for line in stamped)
    assert cluster.kubectl("logs", "-n", ns_name, pod, "--since=1h").stdout == full
    limited = cluster.kubectl("logs", "-n", ns_name, pod, "--limit-bytes=10").stdout
    assert len(limited.encode()) == 10


def test_kubectl_logs_follow_sees_new_lines(cluster, served):
    ns_name, pod = served
    state = cluster.state
    follower = subprocess.Popen([state.kubectl, f"--kubeconfig={state.admin_kubeconfig}", "logs", "-f", "--tail=0", "-n", ns_name, pod],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        complete(f"http://{state.host.ns_ip}:{PORT}")
        os.set_blocking(follower.stdout.fileno(), False)
        seen = wait_for(lambda: follower.stdout.read() or None, timeout=20, what="a followed log line")
        assert seen.strip()
    finally:
        follower.terminate()
        follower.wait(10)


def test_kubectl_logs_previous_after_restart(cluster, served):
    ns_name, pod = served
    pid = server_pid(PORT)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (p := pod_ready(cluster, ns_name, "talker")) and p["status"]["containerStatuses"][0]["restartCount"] >= 1,
             timeout=120, what="restarted")
    previous = cluster.kubectl("logs", "-n", ns_name, pod, "--previous").stdout
    assert "listening" in previous


def test_logs_bad_params_and_unknown_pod(cluster, served):
    ns_name, pod = served
    bad = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/containerLogs/{ns_name}/{pod}/server?tailLines=many", check=False)
    assert bad.returncode != 0 and "tailLines" in bad.stderr
    missing = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/containerLogs/{ns_name}/nope/server", check=False)
    assert missing.returncode != 0 and "not on node" in missing.stderr


def test_direct_requests_without_credentials_get_401(cluster, served):
    code, body = kubelet_get(cluster, "/healthz")
    assert code == 401 and json.loads(body)["reason"] == "Unauthorized"


def test_service_account_authorized_by_subresource(cluster, served):
    cluster.kubectl("create", "serviceaccount", "prober", "-n", "default")
    cluster.kubectl("create", "clusterrole", "node-health", "--verb=get", "--resource=nodes/healthz")
    cluster.kubectl("create", "clusterrolebinding", "prober-health", "--clusterrole=node-health", "--serviceaccount=default:prober")
    token = cluster.kubectl("create", "token", "prober", "-n", "default").stdout.strip()
    assert kubelet_get(cluster, "/healthz", token=token) == (200, "ok")
    ns_name, pod = served
    code, body = kubelet_get(cluster, f"/containerLogs/{ns_name}/{pod}/server", token=token)
    assert code == 403 and "subresource(s)=[log,proxy]" not in body and "proxy" in json.loads(body)["message"]
    code, _ = kubelet_get(cluster, "/pods", token=token)
    assert code == 403
    code, body = kubelet_get(cluster, f"/exec/{ns_name}/{pod}/server?command=true&stdout=true", token=token)
    assert code == 403 and "proxy" in json.loads(body)["message"]
    code, body = kubelet_get(cluster, "/healthz", token="not-a-token")
    assert code == 401


@pytest.mark.parametrize("path", ["pods", "runningpods", "runningpods/"])
def test_pod_lists_through_the_api_server(cluster, served, path):
    """Both spellings, as the kubelet serves them (client-go drops the trailing slash)."""
    ns_name, pod = served
    items = json.loads(cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/{path}").stdout)["items"]
    assert (ns_name, pod) in {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in items}


def test_agent_metrics_through_the_api_server(cluster, served):
    text = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/metrics").stdout
    assert "vnode_pod_workers" in text and 'vnode_container_restarts{container="server"' in text


def test_kubectl_exec_prints_and_returns_the_exit_code(cluster, served):
    ns_name, pod = served
    out = cluster.kubectl("exec", "-n", ns_name, pod, "--", "sh", "-c", "echo $HOSTNAME; echo oops >&2; exit 3", check=False)
    assert out.returncode == 3, out.stderr
    assert out.stdout.strip() == pod and "oops" in out.stderr


def test_kubectl_exec_with_stdin(cluster, served):
    ns_name, pod = served
    out = cluster.kubectl("exec", "-i", "-n", ns_name, pod, "--", "tr", "a-z", "A-Z", input="hello mac\n")
    assert out.stdout == "HELLO MAC\n"


def _port_forward(cluster, ns_name: str, pod: str, local: int):
    state = cluster.state
    proc = subprocess.Popen([state.kubectl, f"--kubeconfig={state.admin_kubeconfig}", "port-forward", "-n", ns_name,
                             f"pod/{pod}", f"{local}:{PORT}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc


def test_kubectl_port_forward_serves_chat_and_runs_in_parallel(cluster, served):
    from vnode.cluster.local import free_port

    ns_name, pod = served
    a, b = free_port("127.0.0.1"), free_port("127.0.0.1")
    forwards = [_port_forward(cluster, ns_name, pod, a), _port_forward(cluster, ns_name, pod, b)]
    try:
        for local in (a, b):
            answer = wait_for(lambda: complete(f"http://127.0.0.1:{local}", chat=True), timeout=30, what=f"chat via port-forward {local}")
            assert answer["choices"][0]["message"]["role"] == "assistant"
    finally:
        for proc in forwards:
            proc.terminate()
            proc.wait(10)


def test_kubectl_exec_tty_sees_its_size(cluster, served):
    ns_name, pod = served
    state = cluster.state
    inner = f"stty cols 101 rows 33; {state.kubectl} --kubeconfig={state.admin_kubeconfig} exec -it -n {ns_name} {pod} -- stty size"
    out = subprocess.run(["script", "-qec", inner, "/dev/null"], capture_output=True, text=True, timeout=60)
    assert "33 101" in out.stdout, (out.stdout, out.stderr)


def _agent(node: str) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "vnode" in cmd and "run" in cmd and f"--node-name={node}" in cmd:
            return proc
    raise AssertionError(f"no vnode agent for {node}")


@pytest.mark.parametrize("tty", [True, False], ids=["tty", "pipes"])
def test_kubectl_exec_yes_to_a_terminal_nobody_reads_keeps_the_agent_bounded(cluster, served, tty):
    """`kubectl exec -t POD -- yes` whose output nobody reads (a stalled terminal, here a
    pipe never read): the command is held back, the agent does not grow (814 MiB in 20 s
    before back-pressure)."""
    ns_name, pod = served
    state = cluster.state
    agent = _agent(NODE)
    command = f"{state.kubectl} --kubeconfig={state.admin_kubeconfig} exec {'-it' if tty else ''} -n {ns_name} {pod} -- yes"
    # script(1) gives kubectl a terminal; its own output goes to a pipe this test never reads.
    argv = ["script", "-qec", command, "/dev/null"] if tty else ["sh", "-c", command]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(3)  # the exec is set up and every buffer on the way has filled
        assert proc.poll() is None
        start = peak = agent.memory_info().rss
        for _ in range(20):
            time.sleep(0.5)
            peak = max(peak, agent.memory_info().rss)
        assert peak - start < 32 * 1024 * 1024, f"the agent grew by {(peak - start) >> 20} MiB in 10 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    # The command itself stays blocked after kubectl is gone: the API server keeps the
    # SPDY session open (it waits on the error stream for the exit status) without reading
    # it, as it does with any kubelet. The idle timeout ends it (unit-tested), or the agent.


def test_kubectl_attach_streams_the_servers_output(cluster, served):
    ns_name, pod = served
    state = cluster.state
    attach = subprocess.Popen([state.kubectl, f"--kubeconfig={state.admin_kubeconfig}", "attach", "-n", ns_name, pod, "-c", "server"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        complete(f"http://{state.host.ns_ip}:{PORT}")
        os.set_blocking(attach.stdout.fileno(), False)
        assert wait_for(lambda: attach.stdout.read() or None, timeout=20, what="attached output").strip()
    finally:
        attach.terminate()
        attach.wait(10)


def _tls_socket(cluster):
    import socket

    pki = f"{cluster.state.directory}/pki"
    ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    ctx.load_cert_chain(f"{pki}/apiserver-kubelet-client.crt", f"{pki}/apiserver-kubelet-client.key")
    raw = socket.create_connection((cluster.state.host.ns_ip, kubelet_port(NODE)), timeout=10)
    return ctx.wrap_socket(raw, server_hostname=cluster.state.host.ns_ip)


def _upgrade(sock, path: str, protocol: str | None = "v4.channel.k8s.io") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: vnode", "Connection: Upgrade", "Upgrade: SPDY/3.1", "Content-Length: 0"]
    if protocol:
        lines.append(f"X-Stream-Protocol-Version: {protocol}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def test_malformed_streaming_requests_get_errors_and_the_server_keeps_serving(cluster, served):
    from vnode.kubelet_api.spdy import DataFrame, FrameEncoder, FrameParser, GoAwayFrame, SynStreamFrame

    ns_name, pod = served
    path = f"/exec/{ns_name}/{pod}/server?command=true&stdout=true"
    # 1. An upgrade without a protocol version: a 400 Status, not a hang.
    with _tls_socket(cluster) as sock:
        head = _upgrade(sock, path, protocol=None)
        assert head.startswith(b"HTTP/1.1 400"), head[:200]
    # 2. A protocol nobody speaks.
    with _tls_socket(cluster) as sock:
        assert _upgrade(sock, path, protocol="v99.channel.k8s.io").startswith(b"HTTP/1.1 400")
    # 3. Garbage after the upgrade (a truncated, wrong-version frame): GOAWAY and close.
    with _tls_socket(cluster) as sock:
        assert _upgrade(sock, path).startswith(b"HTTP/1.1 101")
        sock.sendall(b"\x80\x07\x00\x01\x00\x00\x00\x08\x00")
        frames = FrameParser().feed(sock.recv(65536))
        assert any(isinstance(f, GoAwayFrame) for f in frames), frames
    # 4. An unknown stream type is not a crash: the exec still ends with its status.
    with _tls_socket(cluster) as sock:
        assert _upgrade(sock, path).startswith(b"HTTP/1.1 101")
        enc = FrameEncoder()
        for sid, kind in ((1, "bogus"), (3, "error"), (5, "stdout")):
            sock.sendall(enc.encode(SynStreamFrame(stream_id=sid, headers={"streamtype": [kind]})))
        got, parser = b"", FrameParser()
        sock.settimeout(10)
        while b"Success" not in got:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += b"".join(f.data for f in parser.feed(chunk) if isinstance(f, DataFrame))
        assert b"Success" in got
    # And everyone else is still served.
    assert cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/healthz").stdout == "ok"


def test_python_client_stream_exec_over_websocket(cluster, served):
    from kubernetes import client, config
    from kubernetes.stream import stream

    ns_name, pod = served
    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.state.admin_kubeconfig))
    resp = stream(api.connect_get_namespaced_pod_exec, pod, ns_name, command=["sh", "-c", "echo from-mac; exit 3"],
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=30)
    assert "from-mac" in resp.read_stdout()
    assert resp.returncode == 3


def test_python_client_port_forward_over_websocket(cluster, served):
    """The Python client forwards over WebSocket (portforward.k8s.io channels), which the API
    server passes through to vnode: a health check and a chat completion on one forwarded
    socket each; an undeclared port is refused with a message."""
    from kubernetes import client, config
    from kubernetes.stream import portforward

    ns_name, pod = served
    api = client.CoreV1Api(config.new_client_from_config(config_file=cluster.state.admin_kubeconfig))

    def http(request: bytes) -> bytes:
        pf = portforward(api.connect_get_namespaced_pod_portforward, pod, ns_name, ports=str(PORT))
        sock = pf.socket(PORT)
        sock.settimeout(60)
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        assert pf.error(PORT) is None
        return data

    health = http(b"GET /health HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200") and b'"ok"' in health
    body = json.dumps({"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}).encode()
    chat = http(b"POST /v1/chat/completions HTTP/1.1\r\nHost: pod\r\nConnection: close\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    assert chat.startswith(b"HTTP/1.1 200") and b'"assistant"' in chat
    with pytest.raises(Exception) as refused:
        portforward(api.connect_get_namespaced_pod_portforward, pod, ns_name, ports="22")
    assert "400" in str(refused.value.reason) and "port 22 is not a port vnode serves for pod" in str(refused.value.reason)


def test_vnode_own_logs_are_served_read_only(cluster, served):
    listing = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/logs/").stdout
    assert "vnode.log" in listing
    text = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/logs/vnode.log").stdout
    assert "kubelet API listening" in text
    # A file that exists outside the log directory (<cluster>/agents/<node>/logs): the
    # cluster CA certificate three levels up. %2f reaches vnode as a slash inside the path
    # segment, so only vnode's own check stands between it and the file.
    outside = "..%2f..%2f..%2fpki%2fca.crt"
    assert os.path.exists(f"{cluster.state.directory}/agents/{NODE}/logs/../../../pki/ca.crt")
    code, body = _kubelet_get_as_apiserver(cluster, f"/logs/{outside}")
    assert code == 404 and "BEGIN CERTIFICATE" not in body, (code, body[:200])
    code, body = _kubelet_get_as_apiserver(cluster, "/logs/..%2f")
    assert code == 404 and "logs/" not in body, (code, body[:200])
    assert _kubelet_get_as_apiserver(cluster, "/logs/vnode.log")[0] == 200
    escape = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{NODE}/proxy/logs/{outside}", check=False)
    assert escape.returncode != 0 and "BEGIN CERTIFICATE" not in escape.stdout


def _kubelet_get_as_apiserver(cluster, path: str) -> tuple[int, str]:
    """GET straight to the kubelet API with the API server's kubelet-client certificate,
    the path sent exactly as written (urllib does not normalize %2f or dot segments)."""
    pki = f"{cluster.state.directory}/pki"
    ctx = ssl.create_default_context(cafile=f"{pki}/ca.crt")
    ctx.load_cert_chain(f"{pki}/apiserver-kubelet-client.crt", f"{pki}/apiserver-kubelet-client.key")
    try:
        with urllib.request.urlopen(f"https://{cluster.state.host.ns_ip}:{kubelet_port(NODE)}{path}", context=ctx, timeout=10) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
