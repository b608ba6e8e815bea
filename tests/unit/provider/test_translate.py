"""translate(): a container of a Pod -> LaunchSpec, or a TranslateError with a reason and a fix.

Table-driven over the Pod contract; one test cross-checks the flag table against the real
llama-server's --help when that binary is on this machine.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from vnode.provider.spec import LaunchSpec, ModelSource, PodSpecIn
from vnode.provider.translate import (
    AUTO_PARALLEL,
    DEFAULT_IMAGE_PATTERNS,
    FLAGS,
    UNSUPPORTED_FLAGS,
    RuntimeEntry,
    RuntimeTable,
    TranslateError,
    all_forbidden_env,
    all_forbidden_flags,
    default_runtime_table,
    lookup_flag,
    translate,
)

BIN = "/opt/vnode/bin/llama-server"
IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
POD_IP = "192.168.64.10"
HF = ["-hf", "ggml-org/gemma-3-270m-GGUF:Q4_K_M"]
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def dirs(tmp_path):
    store, sandbox = tmp_path / "store", tmp_path / "pods" / "uid-1" / "sandbox"
    return store, sandbox


def run(dirs, *, args=None, command=None, env=None, ports=None, mounts=None, volumes=None, image=IMAGE,
        working_dir=None, runtime=None, container=None, spec=None) -> LaunchSpec:
    store, sandbox = dirs
    c = {"name": "server", "image": image, "args": list(HF if args is None else args)}
    if command is not None:
        c["command"] = command
    if ports is not None:
        c["ports"] = ports
    if mounts is not None:
        c["volumeMounts"] = mounts
    if working_dir is not None:
        c["workingDir"] = working_dir
    pod = spec or PodSpecIn.model_validate({"containers": [c], "volumes": volumes or []})
    return translate(
        namespace="default", pod_name="gemma-0", pod_uid="uid-1", spec=pod,
        container=container or pod.containers[0], env=dict(env or {}),
        runtime=runtime or default_runtime_table(BIN), pod_ip=POD_IP, model_store=store, sandbox=sandbox,
    )


def refused(dirs, reason: str, *must_mention: str, **kw) -> TranslateError:
    with pytest.raises(TranslateError) as ei:
        run(dirs, **kw)
    err = ei.value
    assert err.reason == reason, err
    for text in must_mention:
        assert text in err.message, err.message
    return err


# ---------------------------------------------------------------- the example Deployment


def test_example_deployment(dirs):
    store, sandbox = dirs
    docs = list(yaml.safe_load_all((REPO_ROOT / "manifests" / "llama-server-deployment.yaml").read_text()))
    template = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    spec = PodSpecIn.model_validate(template)
    got = run(dirs, spec=spec)
    assert got == LaunchSpec(
        namespace="default", pod_name="gemma-0", pod_uid="uid-1", container="server",
        image="ghcr.io/ggml-org/llama.cpp:server", binary=BIN,
        args=["--host", POD_IP, "--port", "8080", "--ctx-size", "2048"],
        env={"HOME": str(sandbox)}, workdir=str(sandbox), host=POD_IP, port=8080, host_ports=[8080],
        model=ModelSource(kind="hf", repo="ggml-org/gemma-3-270m-GGUF", quant="Q4_K_M"),
        ctx_size=2048, parallel=AUTO_PARALLEL, cache_type_k="f16", cache_type_v="f16", kv_unified=True, hf_token=None,
    )


# ---------------------------------------------------------------- runtime table


@pytest.mark.parametrize("image,ok", [
    ("ghcr.io/ggml-org/llama.cpp:server", True),
    ("ghcr.io/ggml-org/llama.cpp:server-b4500", True),
    ("ghcr.io/ggml-org/llama.cpp:server-cuda", True),
    ("ghcr.io/ggml-org/llama.cpp:server-vulkan", True),
    ("ghcr.io/ggml-org/llama.cpp:server@sha256:" + "a" * 64, True),
    ("ghcr.io/ggml-org/llama.cpp:server-b4500@sha256:" + "a" * 64, True),
    ("ghcr.io/ggerganov/llama.cpp:server", True),
    ("ghcr.io/ggerganov/llama.cpp:server-cuda", True),
    ("ghcr.io/ggml-org/llama.cpp:full", False),
    ("ghcr.io/ggml-org/llama.cpp:light", False),
    ("ghcr.io/ggml-org/llama.cpp", False),
    ("ghcr.io/ggml-org/llama.cpp:serverless", False),
    ("nginx", False),
    ("docker.io/library/nginx:1.27", False),
])
def test_default_runtime_table(image, ok):
    assert default_runtime_table(BIN).resolve(image) == (BIN if ok else None)


@pytest.mark.parametrize("image", ["my/llama:1", "docker.io/my/llama:1", "index.docker.io/my/llama:1"])
def test_runtime_table_docker_io_default(image):
    table = RuntimeTable(entries=[RuntimeEntry(image="docker.io/my/llama:*", binary="/x/llama-server")])
    assert table.resolve(image) == "/x/llama-server"
    table = RuntimeTable(entries=[RuntimeEntry(image="my/llama:*", binary="/x/llama-server")])
    assert table.resolve(image) == "/x/llama-server"


def test_runtime_table_first_match_wins():
    table = RuntimeTable(entries=[RuntimeEntry(image="ghcr.io/x/*:beta", binary="/b"), RuntimeEntry(image="ghcr.io/x/*", binary="/a")])
    assert table.resolve("ghcr.io/x/y:beta") == "/b"
    assert table.resolve("ghcr.io/x/y:1") == "/a"


def test_unmapped_image_lists_patterns(dirs):
    err = refused(dirs, "UnsupportedImage", "ubuntu:24.04", *DEFAULT_IMAGE_PATTERNS, image="ubuntu:24.04")
    assert err.message.count("ghcr.io") == len(DEFAULT_IMAGE_PATTERNS)


def test_custom_runtime_binary(dirs):
    table = RuntimeTable(entries=[RuntimeEntry(image="registry.local/llama:*", binary="/usr/local/bin/llama-server-metal")])
    got = run(dirs, image="registry.local/llama:7", runtime=table, command=["llama-server-metal"])
    assert got.binary == "/usr/local/bin/llama-server-metal"


# ---------------------------------------------------------------- command


@pytest.mark.parametrize("command,extra", [
    ([], []),
    (["llama-server"], []),
    (["/app/llama-server"], []),
    (["/usr/bin/llama-server", "-c", "4096"], ["--ctx-size", "4096"]),
])
def test_command_naming_the_server(dirs, command, extra):
    got = run(dirs, command=command)
    assert got.args == ["--host", POD_IP, "--port", "8080", *extra]


def test_command_elements_come_before_args(dirs):
    got = run(dirs, command=["/app/llama-server", "-np", "2"], args=HF + ["-np", "3"])
    assert got.args[4:] == ["--parallel", "2", "--parallel", "3"]
    assert got.parallel == 3  # the last one wins, as in llama-server


@pytest.mark.parametrize("command", [["/bin/sh", "-c", "llama-server -hf x/y"], ["python3"], ["llama-cli"], ["/app/llama-server.sh"]])
def test_other_commands(dirs, command):
    refused(dirs, "UnsupportedCommand", repr(command[0]), command=command)


# ---------------------------------------------------------------- flag syntax


@pytest.mark.parametrize("args,expect_tail", [
    (["--ctx-size=4096"], ["--ctx-size", "4096"]),
    (["-c=4096"], ["--ctx-size", "4096"]),
    (["--ctx_size", "4096"], ["--ctx-size", "4096"]),
    (["-ngl", "99", "-fa", "on"], ["--n-gpu-layers", "99", "--flash-attn", "on"]),
    (["--n-gpu-layers=all"], ["--n-gpu-layers", "all"]),
    (["-ctk", "q8_0", "-ctv=q8_0"], ["--cache-type-k", "q8_0", "--cache-type-v", "q8_0"]),
    (["--no-webui", "-nocb", "--metrics", "--jinja"], ["--no-ui", "--no-cont-batching", "--metrics", "--jinja"]),
    (["--temp", "0.7", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.05", "--seed", "-1"],
     ["--temp", "0.7", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.05", "--seed", "-1"]),
    (["--override-tensor=blk\\.1\\.ffn=CPU"], ["--override-tensor", "blk\\.1\\.ffn=CPU"]),
    (["--chat-template", "chatml", "--reasoning-format", "deepseek", "--reasoning-budget", "0"],
     ["--chat-template", "chatml", "--reasoning-format", "deepseek", "--reasoning-budget", "0"]),
    (["-a", "gemma", "--no-agent", "--no-ui-mcp-proxy", "--offline"], ["--alias", "gemma", "--no-agent", "--no-ui-mcp-proxy", "--offline"]),
    (["--spec-type", "ngram-mod", "--load-mode", "mmap+mlock", "-kvu"],
     ["--spec-type", "ngram-mod", "--load-mode", "mmap+mlock", "--kv-unified"]),
])
def test_allowed_flags_are_passed_on_canonically(dirs, args, expect_tail):
    got = run(dirs, args=HF + args)
    assert got.args == ["--host", POD_IP, "--port", "8080", *expect_tail]


@pytest.mark.parametrize("args,mention", [
    (["--xyz"], "unknown or unsupported llama-server flag --xyz"),
    (["-zz", "1"], "-zz"),
    (["--no-mmap"], "--load-mode none"),
    (["--mlock"], "--load-mode mmap+mlock"),
    (["--version"], "prints information and exits"),
    (["--draft-max", "8"], "--spec-draft-n-max"),
    (["model.gguf"], "'model.gguf'"),
    (["-c"], "needs a value"),
    (["-c", "abc"], "'abc' for -c"),
    (["-c", "-5"], "-c"),
    (["--ctx-size=1_000"], "--ctx-size"),
    (["-np", "0"], "-np"),
    (["--port", "70000"], "--port"),
    (["--temp", "hot"], "--temp"),
    (["-fa", "ON"], "-fa"),
    (["-ctk", "Q8_0"], "q8_0"),
    (["--metrics=1"], "takes no value"),
    (["--prio", "3"], "--prio"),
    (["--chat-template", "{% for m in messages %}{{ m.content }}{% endfor %}"], "built-in template name"),
])
def test_invalid_args(dirs, args, mention):
    refused(dirs, "InvalidArgs", mention, args=HF + args)


# ---------------------------------------------------------------- forbidden flags

FORBIDDEN_SPELLINGS = sorted(n for n in all_forbidden_flags() if n not in ("--host", "--port"))


def test_forbidden_list_is_complete():
    forbidden = all_forbidden_flags()
    for must in ["--log-file", "--slot-save-path", "--ssl-key-file", "--ssl-cert-file", "--path", "--lora", "--lora-scaled",
                 "--control-vector", "--control-vector-scaled", "--mmproj", "-mm", "--mmproj-url", "--grammar-file",
                 "--json-schema-file", "-jf", "--chat-template-file", "--model-draft", "-md", "--api-key-file",
                 "--media-path", "--tools", "--webui-mcp-proxy", "--agent", "--models-dir", "--models-preset",
                 "--mcp-servers-config", "--rpc", "--reuse-port", "--host", "--port"]:
        assert must in forbidden, must
    for allowed in ["--model-url", "-mu", "--offline", "--api-key", "-hf", "-m", "--no-agent", "--no-webui-mcp-proxy"]:
        assert allowed not in forbidden, allowed


@pytest.mark.parametrize("flag", FORBIDDEN_SPELLINGS)
def test_each_forbidden_flag(dirs, flag):
    spec, _ = lookup_flag(flag)
    args = HF + [flag] + (["/etc/passwd"] if spec.takes_value else [])
    err = refused(dirs, "ForbiddenFlag", flag, spec.forbidden, args=args)
    assert "not allowed" in err.message


@pytest.mark.parametrize("flag", [f for f in FORBIDDEN_SPELLINGS if lookup_flag(f)[0].takes_value])
def test_each_forbidden_flag_in_equals_form(dirs, flag):
    refused(dirs, "ForbiddenFlag", flag, args=HF + [f"{flag}=/etc/passwd"])


@pytest.mark.parametrize("var", sorted(k for k in all_forbidden_env() if not k.endswith("*") and k not in ("LLAMA_ARG_HOST", "LLAMA_ARG_PORT")))
def test_each_forbidden_env(dirs, var):
    refused(dirs, "ForbiddenFlag", var, env={var: "1"})


@pytest.mark.parametrize("var", ["DYLD_INSERT_LIBRARIES", "LD_PRELOAD", "PATH", "XDG_CONFIG_HOME", "GGML_BACKEND_PATH"])
def test_loader_and_config_env_refused(dirs, var):
    refused(dirs, "ForbiddenFlag", var, env={var: "/tmp/x"})


@pytest.mark.parametrize("env", [{"LLAMA_ARG_AGENT": "false"}, {"LLAMA_ARG_NO_AGENT": "1"}, {"LLAMA_ARG_REUSE_PORT": "0"},
                                 {"LLAMA_ARG_UI_MCP_PROXY": "off"}, {"LLAMA_ARG_NO_UI_MCP_PROXY": "1"}])
def test_forbidden_switch_env_turned_off_is_fine(dirs, env):
    assert run(dirs, env=env).env == {**env, "HOME": str(dirs[1])}


# ---------------------------------------------------------------- host and port


@pytest.mark.parametrize("host", [POD_IP, "0.0.0.0", "::"])
def test_host_meaning_the_pod_ip(dirs, host):
    got = run(dirs, args=HF + ["--host", host])
    assert got.args.count("--host") == 1 and got.args[:2] == ["--host", POD_IP]
    assert got.host == POD_IP


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.0.0.1", "0.0.0.0,127.0.0.1", "/tmp/llama.sock"])
def test_host_elsewhere(dirs, host):
    refused(dirs, "ForbiddenFlag", f"--host {host}", POD_IP, args=HF + ["--host", host])
    refused(dirs, "ForbiddenFlag", f"LLAMA_ARG_HOST={host}", env={"LLAMA_ARG_HOST": host})


@pytest.mark.parametrize("args,env,ports,port,host_ports", [
    ([], {}, None, 8080, []),  # llama-server's default
    ([], {}, [{"containerPort": 9000}], 9000, []),  # the first containerPort
    ([], {}, [{"containerPort": 9000}, {"containerPort": 9001}], 9000, []),
    (["--port", "9001"], {}, [{"containerPort": 9000}, {"containerPort": 9001}], 9001, []),
    (["--port", "9000"], {}, None, 9000, []),  # nothing declared: the flag decides
    ([], {"LLAMA_ARG_PORT": "9000"}, [{"containerPort": 9000, "hostPort": 9000}], 9000, [9000]),
    (["--port=9000"], {"LLAMA_ARG_PORT": "7000"}, [{"containerPort": 9000}], 9000, []),  # flag beats env
    ([], {}, [{"containerPort": 8080, "hostPort": 8080}, {"containerPort": 9090, "hostPort": 9090}], 8080, [8080, 9090]),
])
def test_port_choice(dirs, args, env, ports, port, host_ports):
    got = run(dirs, args=HF + args, env=env, ports=ports)
    assert got.port == port and got.host_ports == host_ports
    assert got.args[:4] == ["--host", POD_IP, "--port", str(port)]
    assert got.args.count("--port") == 1
    assert "LLAMA_ARG_PORT" not in got.env


@pytest.mark.parametrize("args,env,ports,reason,mention", [
    (["--port", "9000"], {}, [{"containerPort": 8080}], "ForbiddenFlag", "--port 9000"),
    ([], {"LLAMA_ARG_PORT": "9000"}, [{"containerPort": 8080}], "ForbiddenFlag", "LLAMA_ARG_PORT=9000"),
    ([], {}, [{"containerPort": 8080, "hostPort": 18080}], "InvalidArgs", "hostPort 18080"),
    (["--port", "8080"], {}, [{"containerPort": 8080, "hostPort": 80}], "InvalidArgs", "containerPort 8080"),
    ([], {"LLAMA_ARG_PORT": "http"}, None, "InvalidArgs", "LLAMA_ARG_PORT"),
])
def test_port_mismatches(dirs, args, env, ports, reason, mention):
    refused(dirs, reason, mention, args=HF + args, env=env, ports=ports)


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("args,env,model", [
    (["-hf", "ggml-org/gemma-3-270m-GGUF"], {}, ModelSource(kind="hf", repo="ggml-org/gemma-3-270m-GGUF")),
    (["--hf-repo=unsloth/Qwen3-8B-GGUF:UD-Q4_K_XL"], {}, ModelSource(kind="hf", repo="unsloth/Qwen3-8B-GGUF", quant="UD-Q4_K_XL")),
    (["-hfr", "a/b", "-hff", "sub/b-Q8_0.gguf"], {}, ModelSource(kind="hf", repo="a/b", file="sub/b-Q8_0.gguf")),
    (["-mu", "https://example.com/m.gguf"], {}, ModelSource(kind="url", url="https://example.com/m.gguf")),
    ([], {"LLAMA_ARG_HF_REPO": "a/b:Q4_0", "LLAMA_ARG_HF_FILE": "b.gguf"}, ModelSource(kind="hf", repo="a/b", quant="Q4_0", file="b.gguf")),
    ([], {"LLAMA_ARG_MODEL_URL": "http://models.local/m.gguf"}, ModelSource(kind="url", url="http://models.local/m.gguf")),
    (["-hf", "a/b"], {"LLAMA_ARG_MODEL_URL": "http://x/m.gguf"}, ModelSource(kind="hf", repo="a/b")),  # flag beats env
    (["-hf", "a/b"], {"LLAMA_ARG_HF_REPO": "c/d"}, ModelSource(kind="hf", repo="a/b")),
])
def test_model_sources(dirs, args, env, model):
    got = run(dirs, args=args, env=env)
    assert got.model == model
    assert not any(a in got.args for a in ("-hf", "--hf-repo", "-hff", "--hf-file", "-mu", "--model-url", "-m", "--model"))
    assert not any(k in got.env for k in ("LLAMA_ARG_HF_REPO", "LLAMA_ARG_HF_FILE", "LLAMA_ARG_MODEL_URL", "LLAMA_ARG_MODEL"))


@pytest.mark.parametrize("args,env,reason,mention", [
    ([], {}, "MissingModel", "-hf"),
    (["-c", "2048"], {"HF_TOKEN": "x"}, "MissingModel", "no model"),
    (["-hff", "x.gguf"], {}, "InvalidArgs", "-hf"),
    (["-hf", "a/b", "-mu", "https://x/m.gguf"], {}, "InvalidArgs", "one way only"),
    (["-hf", "not-a-repo"], {}, "InvalidArgs", "<user>/<model>"),
    (["-hf", "a/../b"], {}, "InvalidArgs", "<user>/<model>"),
    (["-hf", "a/b:"], {}, "InvalidArgs", "<user>/<model>"),
    (["-hf", "a/b", "-hff", "../../etc/passwd"], {}, "InvalidArgs", "inside the repository"),
    (["-hf", "a/b", "-hff", "/etc/passwd"], {}, "InvalidArgs", "inside the repository"),
    (["-mu", "file:///etc/passwd"], {}, "InvalidArgs", "http"),
    (["-mu", "ftp://x/m.gguf"], {}, "InvalidArgs", "http"),
    ([], {"LLAMA_ARG_HF_REPO": "a/b", "LLAMA_ARG_MODEL_URL": "https://x/m.gguf"}, "InvalidArgs", "one way only"),
])
def test_model_errors(dirs, args, env, reason, mention):
    refused(dirs, reason, mention, args=args, env=env)


def store_volume(store: Path, sub: str = "", **extra):
    return {"name": "models", "hostPath": {"path": str(store / sub) if sub else str(store), **extra}}


@pytest.mark.parametrize("mount,model_arg,host_rel", [
    ({"name": "models", "mountPath": "/models"}, "/models/gemma.gguf", "gemma.gguf"),
    ({"name": "models", "mountPath": "/models/"}, "/models/a/b/gemma.gguf", "a/b/gemma.gguf"),
    ({"name": "models", "mountPath": "/models", "subPath": "team-a"}, "/models/gemma.gguf", "team-a/gemma.gguf"),
    ({"name": "models", "mountPath": "/models", "subPath": "team-a/x"}, "/models/./y/../gemma.gguf", "team-a/x/gemma.gguf"),
    ({"name": "models", "mountPath": "/m.gguf", "subPath": "gemma.gguf"}, "/m.gguf", "gemma.gguf"),  # a file mount
])
def test_model_path_on_store_hostpath(dirs, mount, model_arg, host_rel):
    store, _ = dirs
    got = run(dirs, args=["-m", model_arg, "-c", "1024"], mounts=[mount], volumes=[store_volume(store)])
    assert got.model == ModelSource(kind="path", path=str((store / host_rel).resolve()))
    assert got.args == ["--host", POD_IP, "--port", "8080", "--ctx-size", "1024"]


def test_model_path_hostpath_is_a_store_subdir(dirs):
    store, _ = dirs
    got = run(dirs, args=["--model=/data/q.gguf"], mounts=[{"name": "models", "mountPath": "/data"}],
              volumes=[store_volume(store, "hf/qwen", type="Directory")])
    assert got.model.path == str((store / "hf" / "qwen" / "q.gguf").resolve())
    # the volume's host directory, for its stats in /stats/summary
    assert got.host_volumes == {"models": str((store / "hf" / "qwen").resolve())}


def test_model_path_from_env_and_relative_to_working_dir(dirs):
    store, sandbox = dirs
    mounts, vols = [{"name": "models", "mountPath": "/models"}], [store_volume(store)]
    got = run(dirs, args=[], env={"LLAMA_ARG_MODEL": "/models/g.gguf"}, mounts=mounts, volumes=vols)
    assert got.model.path == str((store / "g.gguf").resolve()) and "LLAMA_ARG_MODEL" not in got.env
    got = run(dirs, args=["-m", "g.gguf"], mounts=mounts, volumes=vols, working_dir="/models")
    assert got.model.path == str((store / "g.gguf").resolve())
    assert got.workdir == str(sandbox / "models")


def test_longest_mount_wins(dirs):
    store, _ = dirs
    mounts = [{"name": "scratch", "mountPath": "/models"}, {"name": "models", "mountPath": "/models/store"}]
    vols = [{"name": "scratch", "emptyDir": {}}, store_volume(store)]
    got = run(dirs, args=["-m", "/models/store/g.gguf"], mounts=mounts, volumes=vols)
    assert got.model.path == str((store / "g.gguf").resolve())
    refused(dirs, "InvalidModelPath", "/models/g.gguf", "'scratch'", args=["-m", "/models/g.gguf"], mounts=mounts, volumes=vols)


@pytest.mark.parametrize("model_arg,mention", [
    ("/models/../etc/passwd", "/etc/passwd"),  # `..` escape: resolved in the container's view first
    ("/models/../../models2/x.gguf", "/models2/x.gguf"),
    ("/elsewhere/g.gguf", "not inside any volumeMount"),
    ("/modelsX/g.gguf", "not inside any volumeMount"),  # a prefix of the name is not a parent
    ("g.gguf", "relative"),
])
def test_model_path_outside(dirs, model_arg, mention):
    store, _ = dirs
    err = refused(dirs, "InvalidModelPath", mention, args=["-m", model_arg],
                  mounts=[{"name": "models", "mountPath": "/models"}], volumes=[store_volume(store)])
    assert "-hf" in err.message and str(store.resolve()) in err.message


def test_model_path_symlink_out_of_store(dirs, tmp_path):
    store, _ = dirs
    (store / "evil").mkdir(parents=True)
    (store / "evil" / "g.gguf").symlink_to("/etc/passwd")
    refused(dirs, "InvalidModelPath", "outside the model store", args=["-m", "/models/evil/g.gguf"],
            mounts=[{"name": "models", "mountPath": "/models"}], volumes=[store_volume(store)])


def test_model_path_not_under_any_hostpath(dirs):
    refused(dirs, "InvalidModelPath", "'cache'", args=["-m", "/cache/g.gguf"],
            mounts=[{"name": "cache", "mountPath": "/cache"}], volumes=[{"name": "cache", "emptyDir": {}}])


# ---------------------------------------------------------------- volumes


@pytest.mark.parametrize("volume,mount,mention", [
    ({"name": "v", "hostPath": {"path": "/etc"}}, {}, "/etc"),
    ({"name": "v", "hostPath": {"path": "STORE/../outside"}}, {}, "outside"),  # `..` escape of the store
    ({"name": "v", "hostPath": {"path": "STORE"}}, {"subPath": "../x"}, "subPath"),
    ({"name": "v", "hostPath": {"path": "STORE"}}, {"subPath": "/abs"}, "subPath"),
    ({"name": "v", "hostPath": {"path": "relative/dir"}}, {}, "absolute"),
    ({"name": "v", "persistentVolumeClaim": {"claimName": "c"}}, {}, "persistentVolumeClaim"),
    ({"name": "v", "nfs": {"server": "x", "path": "/"}}, {}, "type vnode does not support"),
    ({"name": "w"}, {}, "names no volume"),
])
def test_unsupported_volumes(dirs, volume, mount, mention):
    store, _ = dirs
    if "hostPath" in volume:
        volume = {**volume, "hostPath": {"path": volume["hostPath"]["path"].replace("STORE", str(store))}}
    refused(dirs, "UnsupportedVolume", mention, mounts=[{"name": "v", "mountPath": "/data", **mount}], volumes=[volume])


def test_supported_volumes(dirs):
    store, _ = dirs
    vols = [store_volume(store), {"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}},
            {"name": "sec", "secret": {"secretName": "s"}}, {"name": "kube-api-access-x", "projected": {"sources": []}},
            {"name": "unused-pvc", "persistentVolumeClaim": {"claimName": "c"}}]
    mounts = [{"name": "models", "mountPath": "/models", "readOnly": True}, {"name": "tmp", "mountPath": "/tmp"},
              {"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "sec", "mountPath": "/etc/sec"},
              {"name": "kube-api-access-x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]
    assert run(dirs, mounts=mounts, volumes=vols).model.kind == "hf"


# ---------------------------------------------------------------- env


def test_llama_arg_env(dirs):
    env = {"LLAMA_ARG_CTX_SIZE": "8192", "LLAMA_ARG_N_PARALLEL": "2", "LLAMA_ARG_CACHE_TYPE_K": "q8_0",
           "LLAMA_ARG_CACHE_TYPE_V": "q4_0", "LLAMA_ARG_FLASH_ATTN": "on", "LLAMA_ARG_NO_CONT_BATCHING": "1",
           "LLAMA_ARG_JINJA": "false", "LLAMA_ARG_HOST": "0.0.0.0", "LLAMA_ARG_ENDPOINT_METRICS": "1", "MY_VAR": "x"}
    got = run(dirs, env=env)
    assert (got.ctx_size, got.parallel, got.cache_type_k, got.cache_type_v) == (8192, 2, "q8_0", "q4_0")
    assert got.args == ["--host", POD_IP, "--port", "8080"]  # llama-server reads the rest from its env
    assert got.env == {**{k: v for k, v in env.items() if k != "LLAMA_ARG_HOST"}, "HOME": str(dirs[1])}


def test_flags_beat_env(dirs):
    got = run(dirs, args=HF + ["-c", "1024", "-np", "1", "-ctk", "f32"],
              env={"LLAMA_ARG_CTX_SIZE": "8192", "LLAMA_ARG_N_PARALLEL": "2", "LLAMA_ARG_CACHE_TYPE_K": "q8_0"})
    assert (got.ctx_size, got.parallel, got.cache_type_k, got.cache_type_v) == (1024, 1, "f32", "f16")


@pytest.mark.parametrize("args,env,ctx,parallel", [
    ([], {}, None, AUTO_PARALLEL),
    (["-c", "0"], {}, None, AUTO_PARALLEL),  # 0 = the model's training context
    (["-np", "-1"], {}, None, AUTO_PARALLEL),
    (["--kv-unified-per-slot", "4096", "-np", "2"], {}, 8192, 2),
    (["--kv-unified-per-slot", "1000", "-c", "3000"], {}, 3000, AUTO_PARALLEL),
])
def test_memory_numbers(dirs, args, env, ctx, parallel):
    got = run(dirs, args=HF + args, env=env)
    assert (got.ctx_size, got.parallel) == (ctx, parallel)


@pytest.mark.parametrize("env,mention", [
    ({"LLAMA_ARG_CTX_SIZE": "big"}, "LLAMA_ARG_CTX_SIZE"),
    ({"LLAMA_ARG_JINJA": "maybe"}, "LLAMA_ARG_JINJA"),
    ({"LLAMA_ARG_CACHE_TYPE_K": "q9"}, "LLAMA_ARG_CACHE_TYPE_K"),
    ({"LLAMA_ARG_BOGUS": "1"}, "unknown or unsupported llama-server environment variable LLAMA_ARG_BOGUS"),
    ({"LLAMA_ARG_NO_MMAP": "1"}, "LLAMA_ARG_LOAD_MODE=none"),
])
def test_invalid_env(dirs, env, mention):
    refused(dirs, "InvalidArgs", mention, env=env)


def test_plain_switch_env_needs_truthy(dirs):
    assert run(dirs, env={"LLAMA_ARG_SWA_FULL": "maybe"}).env["LLAMA_ARG_SWA_FULL"] == "maybe"  # ignored, like llama-server


def test_process_env_and_tokens(dirs):
    store, sandbox = dirs
    env = {"HF_TOKEN": "hf_abc", "HOME": "/root", "TZ": "UTC"}
    got = run(dirs, env=env)
    assert got.env == {"HF_TOKEN": "hf_abc", "HOME": str(sandbox), "TZ": "UTC"}
    assert got.hf_token == "hf_abc"
    assert run(dirs, env={"HUGGING_FACE_HUB_TOKEN": "hf_old"}).hf_token == "hf_old"
    got = run(dirs, args=HF + ["-hft", "hf_flag"], env={"HF_TOKEN": "hf_env"})
    assert got.hf_token == "hf_flag" and "hf_flag" not in got.args


def test_api_key_moves_to_env(dirs):
    got = run(dirs, args=HF + ["--api-key", "s3cret"], env={"LLAMA_API_KEY": "other"})
    assert "s3cret" not in got.args and "--api-key" not in got.args
    assert got.env["LLAMA_API_KEY"] == "s3cret"
    assert run(dirs, env={"LLAMA_API_KEY": "k"}).env["LLAMA_API_KEY"] == "k"


@pytest.mark.parametrize("working_dir,rel", [(None, ""), ("/app", "app"), ("/work/../..//etc", "etc"), ("/", "")])
def test_workdir_stays_in_sandbox(dirs, working_dir, rel):
    _, sandbox = dirs
    got = run(dirs, working_dir=working_dir)
    assert got.workdir == str(sandbox / rel if rel else sandbox)


# ---------------------------------------------------------------- the table against the real binary


def _real_server() -> str | None:
    from vnode.cluster.build import cached_llama_server

    found = [os.environ.get("VNODE_TEST_LLAMA_SERVER", ""), str(cached_llama_server() or "")]
    return next((p for p in found if p and os.access(p, os.X_OK)), None)


def _help_options(text: str) -> list[dict]:
    opts: list[dict] = []
    for line in text.splitlines():
        if line.startswith("-") and not line.startswith("-----"):
            m = re.search(r"(?<![,\s])\s{2,}", line)
            head = line[: m.start()] if m else line
            names, nvals = [], 0
            for piece in re.split(r",\s+", head):
                toks = re.findall(r"(?:<[^>]*>|[^\s<])+", piece)
                names.append(toks[0])
                nvals += len(toks) - 1
            opts.append({"names": names, "nvals": nvals, "env": None})
        elif opts and (m := re.search(r"\(env: ([A-Z0-9_]+)\)", line)):
            opts[-1]["env"] = m.group(1)
    return opts


@pytest.mark.skipif(_real_server() is None, reason="no llama-server binary on this machine")
def test_flag_table_matches_llama_server_help():
    text = subprocess.run([_real_server(), "--help"], capture_output=True, text=True, timeout=60).stdout
    opts = _help_options(text)
    assert len(opts) > 200
    in_help = set()
    problems = []
    for o in opts:
        in_help.update(o["names"])
        for name in o["names"]:
            if name in UNSUPPORTED_FLAGS:
                continue
            hit = lookup_flag(name)
            if hit is None:
                problems.append(f"{name}: not classified")
                continue
            spec, _ = hit
            if set(spec.names + spec.negatives) != set(o["names"]):
                problems.append(f"{name}: spellings {o['names']} vs {spec.names + spec.negatives}")
            if spec.env != o["env"]:
                problems.append(f"{name}: env {o['env']} vs {spec.env}")
            # A refused flag is refused on sight, so its value is never parsed (one takes two).
            if not spec.forbidden and o["nvals"] != int(spec.takes_value):
                problems.append(f"{name}: {o['nvals']} values in --help, table says {int(spec.takes_value)}")
    for spec in FLAGS:
        for name in spec.names + spec.negatives:
            if name not in in_help:
                problems.append(f"{name}: in the table but not in --help")
    assert not problems, "\n".join(problems)


def test_flags_that_change_memory_reach_the_estimate(dirs):
    """-ub, -fa, --swa-full and a sized --cache-ram are carried into the LaunchSpec, where the
    estimate and the budget read them; llama-server's defaults otherwise."""
    plain = run(dirs, args=["-hf", "ggml-org/gemma-3-270m-GGUF"])
    assert (plain.n_ubatch, plain.flash_attn, plain.swa_full, plain.cache_ram_mib) == (None, True, False, None)
    tuned = run(dirs, args=["-hf", "ggml-org/gemma-3-270m-GGUF", "-ub", "2048", "-fa", "off", "--swa-full",
                            "--cache-ram", "1024"])
    assert (tuned.n_ubatch, tuned.flash_attn, tuned.swa_full, tuned.cache_ram_mib) == (2048, False, True, 1024)
    for unbounded in ("-1", "0"):
        assert run(dirs, args=["-hf", "ggml-org/gemma-3-270m-GGUF", "--cache-ram", unbounded]).cache_ram_mib is None
    assert run(dirs, args=["-hf", "ggml-org/gemma-3-270m-GGUF"], env={"LLAMA_ARG_FLASH_ATTN": "false"}).flash_attn is False
