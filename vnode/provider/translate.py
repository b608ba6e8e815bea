"""Turning one container of a Pod into a LaunchSpec: image -> native binary, args -> checked flags.

Flags and LLAMA_ARG_* env are checked against a table made from llama-server's --help; what vnode
cannot honour safely (host paths, other addresses, tools that run commands) is refused with a reason
shown by `kubectl describe pod`. Pure: imports no Kubernetes client, touches no file but Path.resolve.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel

from vnode.provider.spec import ContainerIn, LaunchSpec, ModelSource, PodSpecIn, Volume, VolumeMount

__all__ = [
    "AUTO_PARALLEL",
    "DEFAULT_IMAGE_PATTERNS",
    "DEFAULT_PORT",
    "DENIED_ENV",
    "FLAGS",
    "FORBIDDEN_FLAG",
    "FlagSpec",
    "INVALID_ARGS",
    "INVALID_MODEL_PATH",
    "MISSING_MODEL",
    "RuntimeEntry",
    "RuntimeTable",
    "TranslateError",
    "UNSUPPORTED_COMMAND",
    "UNSUPPORTED_ENV",
    "UNSUPPORTED_FLAGS",
    "UNSUPPORTED_IMAGE",
    "UNSUPPORTED_VOLUME",
    "Value",
    "all_forbidden_env",
    "all_forbidden_flags",
    "default_runtime_table",
    "lookup_flag",
    "translate",
]

# Waiting reasons (shown by `kubectl describe pod`).
UNSUPPORTED_IMAGE = "UnsupportedImage"
UNSUPPORTED_COMMAND = "UnsupportedCommand"
FORBIDDEN_FLAG = "ForbiddenFlag"
INVALID_ARGS = "InvalidArgs"
UNSUPPORTED_VOLUME = "UnsupportedVolume"
INVALID_MODEL_PATH = "InvalidModelPath"
MISSING_MODEL = "MissingModel"

DEFAULT_PORT = 8080  # llama-server's own default
AUTO_PARALLEL = 4  # what llama-server picks for -np -1 (the default): "using n_parallel = 4"
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
SERVER_NAME = "llama-server"


class TranslateError(Exception):
    """A container vnode will not run; `reason` is CamelCase, `message` says what to change."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message

    def __repr__(self) -> str:
        return f"TranslateError({self.reason!r}, {self.message!r})"


# --------------------------------------------------------------------------- runtime table

DEFAULT_IMAGE_PATTERNS: tuple[str, ...] = tuple(
    f"ghcr.io/{org}/llama.cpp:{tag}"
    for org in ("ggml-org", "ggerganov")  # ggerganov: the project's old organisation
    for tag in ("server", "server-*", "server@sha256:*")  # server-* covers server-b4500, -cuda, -vulkan, and digests
)


class RuntimeEntry(BaseModel):
    image: str  # fnmatch pattern over the full image reference
    binary: str  # name or absolute path of the native server


class RuntimeTable(BaseModel):
    entries: list[RuntimeEntry]

    def resolve(self, image: str) -> str | None:
        """The binary for `image`: the first entry whose pattern matches it (docker.io defaults tried too)."""
        candidates = _image_candidates(image.strip())
        for entry in self.entries:
            if any(fnmatch.fnmatchcase(c, entry.image) for c in candidates):
                return entry.binary
        return None

    def patterns(self) -> list[str]:
        return [e.image for e in self.entries]


def _image_candidates(image: str) -> list[str]:
    """`image` as written plus its docker.io spellings: nginx == docker.io/library/nginx."""
    out = [image]
    first, _, rest = image.partition("/")
    has_registry = bool(rest) and ("." in first or ":" in first or first == "localhost")
    if not has_registry:
        out.append(f"docker.io/{image}" if rest else f"docker.io/library/{image}")
    elif first in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        out += [f"docker.io/{rest}", rest]
        if rest.startswith("library/"):
            out.append(rest.removeprefix("library/"))
    return out


def default_runtime_table(llama_server: str) -> RuntimeTable:
    """The llama.cpp server images (any tag variant or digest) -> the given llama-server."""
    return RuntimeTable(entries=[RuntimeEntry(image=p, binary=llama_server) for p in DEFAULT_IMAGE_PATTERNS])


# --------------------------------------------------------------------------- flag table

_TRUTHY = ("on", "enabled", "true", "1")
_FALSEY = ("off", "disabled", "false", "0")
_ON_OFF_AUTO = ("on", "off", "auto", *_TRUTHY[1:], *_FALSEY[1:])  # llama-server also takes true/1/...
_ON_OFF = ("on", "off", *_TRUTHY[1:], *_FALSEY[1:])
_KV_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
_INT_RE = re.compile(r"^[+-]?\d+$")
_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Value:
    """How one flag's value is checked; `describe()` is the wording for errors and docs."""

    kind: Literal["int", "float", "choice", "text", "regex"]
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()  # choice; for int: words accepted besides a number ("auto")
    regex: str | None = None
    what: str = ""  # regex: what a valid value looks like

    def check(self, raw: str) -> str:
        """The value to pass on, or ValueError(what was expected)."""
        if self.kind == "text":
            return raw
        if self.kind == "choice":
            if raw in self.choices:
                return raw
        elif self.kind == "regex":
            if self.regex is not None and re.fullmatch(self.regex, raw):
                return raw
        elif self.kind == "int":
            if raw in self.choices:
                return raw
            if _INT_RE.match(raw):
                n = int(raw)
                if (self.lo is None or n >= self.lo) and (self.hi is None or n <= self.hi):
                    return str(n)
        elif self.kind == "float" and _FLOAT_RE.match(raw):
            return raw
        raise ValueError(self.describe())

    def describe(self) -> str:
        if self.kind == "text":
            return "any text"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "regex":
            return self.what or f"a value matching {self.regex}"
        if self.kind == "float":
            return "a number"
        s = "an integer"
        if self.lo is not None and self.hi is not None:
            s += f" from {self.lo} to {self.hi}"
        elif self.lo is not None:
            s += f" >= {self.lo}"
        if self.choices:
            s += " or " + ", ".join(self.choices)
        return s


def _int(lo: int | None = None, hi: int | None = None, *words: str) -> Value:
    return Value("int", lo=lo, hi=hi, choices=words)


def _choice(*choices: str) -> Value:
    return Value("choice", choices=choices)


def _regex(regex: str, what: str) -> Value:
    return Value("regex", regex=regex, what=what)


INT = _int()
NUM = Value("float")
TEXT = Value("text")
_HEX = _regex(r"(0x)?[0-9a-fA-F]+", "a hex CPU mask")
_RANGE = _regex(r"\d+-\d+", "a CPU range lo-hi")
_BIT = _choice("0", "1")
_KV = _choice(*_KV_TYPES)
_NGL = _int(-1, None, "auto", "all")
_DEVICES = _regex(r"[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*", "a comma-separated list of device names, or none")
_CSV_NUM = _regex(r"[0-9.eE+-]+(,[0-9.eE+-]+)*", "comma-separated numbers")
_NAME = _regex(r"[A-Za-z0-9][A-Za-z0-9._-]*", "a built-in template name such as chatml or llama3")
_PRIO = _int(-1, 2)  # 3 = realtime would let one pod starve the node and the agent
_SPEC_TYPES = ("none", "draft-simple", "draft-eagle3", "draft-mtp", "draft-dflash", "draft-dspark", "ngram-simple",
               "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")
_SPEC_TYPE = _regex("(" + "|".join(_SPEC_TYPES) + ")(,(" + "|".join(_SPEC_TYPES) + "))*",
                    "a comma-separated list of: " + ", ".join(_SPEC_TYPES))

# Roles: values translate() needs. Consumed roles leave the args (and their env var the process env).
_CONSUMED = frozenset({"model_path", "model_url", "hf_repo", "hf_file", "hf_token", "host", "port", "api_key"})


@dataclass(frozen=True)
class FlagSpec:
    """One llama-server option: every spelling, its value, its env var, and whether vnode refuses it.

    A switch has `value=None`; a switch pair has `negatives` (`--no-x`), which share `env`
    (llama-server also reads LLAMA_ARG_NO_X for pairs). `forbidden` refuses the positive
    spellings, and the env var when it is set (switches: when truthy); negatives stay allowed.
    """

    names: tuple[str, ...]  # names[0] is the spelling vnode passes on
    value: Value | None = None
    env: str | None = None
    negatives: tuple[str, ...] = ()
    forbidden: str | None = None
    role: str | None = None

    @property
    def takes_value(self) -> bool:
        return self.value is not None


def _f(*names: str, value: Value | None = None, env: str | None = None, neg: tuple[str, ...] = (),
       forbidden: str | None = None, role: str | None = None) -> FlagSpec:
    return FlagSpec(tuple(names), value, env, neg, forbidden, role)


_HOST_FILE = "reads a file from a path on the Mac, outside anything the pod can mount"
_DOWNLOADS = ("makes llama-server download a model by itself, bypassing vnode's model store and memory check; "
              "use -hf/--hf-repo or --model-url")

FLAGS: tuple[FlagSpec, ...] = (
    # ---- common
    _f("--threads", "-t", value=_int(-1), env="LLAMA_ARG_THREADS"),
    _f("--threads-batch", "-tb", value=_int(-1)),
    _f("--cpu-mask", "-C", value=_HEX),
    _f("--cpu-range", "-Cr", value=_RANGE),
    _f("--cpu-strict", value=_BIT),
    _f("--prio", value=_PRIO),
    _f("--poll", value=_int(0, 100)),
    _f("--cpu-mask-batch", "-Cb", value=_HEX),
    _f("--cpu-range-batch", "-Crb", value=_RANGE),
    _f("--cpu-strict-batch", value=_BIT),
    _f("--prio-batch", value=_PRIO),
    _f("--poll-batch", value=_BIT),
    _f("--ctx-size", "-c", value=_int(0), env="LLAMA_ARG_CTX_SIZE", role="ctx_size"),
    _f("--n-predict", "--predict", "-n", value=_int(-2), env="LLAMA_ARG_N_PREDICT"),
    _f("--batch-size", "-b", value=_int(1), env="LLAMA_ARG_BATCH"),
    _f("--ubatch-size", "-ub", value=_int(1), env="LLAMA_ARG_UBATCH", role="n_ubatch"),
    _f("--keep", value=_int(-1)),
    _f("--swa-full", env="LLAMA_ARG_SWA_FULL", role="swa_full"),
    _f("--flash-attn", "-fa", value=_choice(*_ON_OFF_AUTO), env="LLAMA_ARG_FLASH_ATTN", role="flash_attn"),
    _f("--perf", neg=("--no-perf",), env="LLAMA_ARG_PERF"),
    _f("--escape", "-e", neg=("--no-escape",)),
    _f("--rope-scaling", value=_choice("none", "linear", "yarn"), env="LLAMA_ARG_ROPE_SCALING_TYPE"),
    _f("--rope-scale", value=NUM, env="LLAMA_ARG_ROPE_SCALE"),
    _f("--rope-freq-base", value=NUM, env="LLAMA_ARG_ROPE_FREQ_BASE"),
    _f("--rope-freq-scale", value=NUM, env="LLAMA_ARG_ROPE_FREQ_SCALE"),
    _f("--yarn-orig-ctx", value=_int(0), env="LLAMA_ARG_YARN_ORIG_CTX"),
    _f("--yarn-ext-factor", value=NUM, env="LLAMA_ARG_YARN_EXT_FACTOR"),
    _f("--yarn-attn-factor", value=NUM, env="LLAMA_ARG_YARN_ATTN_FACTOR"),
    _f("--yarn-beta-slow", value=NUM, env="LLAMA_ARG_YARN_BETA_SLOW"),
    _f("--yarn-beta-fast", value=NUM, env="LLAMA_ARG_YARN_BETA_FAST"),
    _f("--kv-offload", "-kvo", neg=("--no-kv-offload", "-nkvo"), env="LLAMA_ARG_KV_OFFLOAD"),
    _f("--repack", neg=("--no-repack", "-nr"), env="LLAMA_ARG_REPACK"),
    _f("--no-host", env="LLAMA_ARG_NO_HOST"),
    _f("--cache-type-k", "-ctk", value=_KV, env="LLAMA_ARG_CACHE_TYPE_K", role="cache_type_k"),
    _f("--cache-type-v", "-ctv", value=_KV, env="LLAMA_ARG_CACHE_TYPE_V", role="cache_type_v"),
    _f("--defrag-thold", "-dt", value=NUM, env="LLAMA_ARG_DEFRAG_THOLD"),
    _f("--rpc", value=TEXT, env="LLAMA_ARG_RPC",
       forbidden="sends the model and its computation to RPC servers at other addresses; vnode runs models on this Mac only"),
    _f("--load-mode", "-lm", value=_choice("auto", "none", "mmap", "mlock", "mmap+mlock", "dio"), env="LLAMA_ARG_LOAD_MODE"),
    _f("--lazy-mode", "-lzm", value=_choice("on", "auto", "off"), env="LLAMA_ARG_LAZY_MODE"),
    _f("--numa", value=_choice("distribute", "isolate", "numactl"), env="LLAMA_ARG_NUMA"),
    _f("--device", "-dev", value=_DEVICES, env="LLAMA_ARG_DEVICE"),
    _f("--override-tensor", "-ot", value=TEXT, env="LLAMA_ARG_OVERRIDE_TENSOR"),
    _f("--cpu-moe", "-cmoe", env="LLAMA_ARG_CPU_MOE"),
    _f("--n-cpu-moe", "-ncmoe", value=_int(0), env="LLAMA_ARG_N_CPU_MOE"),
    _f("--n-cpu-ffn", "-ncffn", value=_int(0), env="LLAMA_ARG_N_CPU_FFN"),
    _f("--n-gpu-layers", "--gpu-layers", "-ngl", value=_NGL, env="LLAMA_ARG_N_GPU_LAYERS"),
    _f("--split-mode", "-sm", value=_choice("none", "layer", "row", "tensor"), env="LLAMA_ARG_SPLIT_MODE"),
    _f("--tensor-split", "-ts", value=_CSV_NUM, env="LLAMA_ARG_TENSOR_SPLIT"),
    _f("--main-gpu", "-mg", value=_int(0), env="LLAMA_ARG_MAIN_GPU"),
    _f("--fit", "-fit", value=_choice(*_ON_OFF), env="LLAMA_ARG_FIT"),
    _f("--fit-target", "-fitt", value=_CSV_NUM, env="LLAMA_ARG_FIT_TARGET"),
    _f("--fit-ctx", "-fitc", value=_int(0), env="LLAMA_ARG_FIT_CTX"),
    _f("--check-tensors"),
    _f("--override-kv", value=TEXT),
    _f("--op-offload", neg=("--no-op-offload",)),
    _f("--lora", value=TEXT, forbidden="reads a LoRA adapter from a path on the Mac; LoRA adapters are not supported"),
    _f("--lora-scaled", value=TEXT, forbidden="reads LoRA adapters from paths on the Mac; LoRA adapters are not supported"),
    _f("--control-vector", value=TEXT, forbidden="reads a control vector from a path on the Mac; control vectors are not supported"),
    _f("--control-vector-scaled", value=TEXT,
       forbidden="reads control vectors from paths on the Mac; control vectors are not supported"),
    _f("--control-vector-layer-range", value=TEXT, forbidden="only used with --control-vector, which reads paths on the Mac"),
    _f("--model", "-m", value=TEXT, env="LLAMA_ARG_MODEL", role="model_path"),
    _f("--model-url", "-mu", value=TEXT, env="LLAMA_ARG_MODEL_URL", role="model_url"),
    _f("--docker-repo", "-dr", value=TEXT, env="LLAMA_ARG_DOCKER_REPO", forbidden=_DOWNLOADS),
    _f("--hf-repo", "-hf", "-hfr", value=TEXT, env="LLAMA_ARG_HF_REPO", role="hf_repo"),
    _f("--hf-file", "-hff", value=TEXT, env="LLAMA_ARG_HF_FILE", role="hf_file"),
    _f("--hf-token", "-hft", value=TEXT, env="HF_TOKEN", role="hf_token"),
    _f("--log-disable"),
    _f("--log-file", value=TEXT, env="LLAMA_ARG_LOG_FILE",
       forbidden="writes a file at a path on the Mac; the server's output already goes to kubectl logs"),
    _f("--log-jsonl", neg=("--no-log-jsonl",), env="LLAMA_ARG_LOG_JSONL"),
    _f("--log-colors", value=_choice(*_ON_OFF_AUTO), env="LLAMA_ARG_LOG_COLORS"),
    _f("--verbose", "--log-verbose", "-v"),
    _f("--offline", env="LLAMA_ARG_OFFLINE"),
    _f("--log-verbosity", "--verbosity", "-lv", value=INT, env="LLAMA_ARG_LOG_VERBOSITY"),
    _f("--log-prefix", neg=("--no-log-prefix",), env="LLAMA_ARG_LOG_PREFIX"),
    _f("--log-timestamps", neg=("--no-log-timestamps",), env="LLAMA_ARG_LOG_TIMESTAMPS"),
    _f("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft", value=_KV, env="LLAMA_ARG_SPEC_DRAFT_CACHE_TYPE_K"),
    _f("--spec-draft-type-v", "-ctvd", "--cache-type-v-draft", value=_KV, env="LLAMA_ARG_SPEC_DRAFT_CACHE_TYPE_V"),
    # ---- sampling
    _f("--samplers", value=TEXT),
    _f("--seed", "-s", value=INT),
    _f("--sampler-seq", "--sampling-seq", value=TEXT),
    _f("--ignore-eos"),
    _f("--temp", "--temperature", value=NUM, env="LLAMA_ARG_TEMPERATURE"),
    _f("--top-k", value=_int(0), env="LLAMA_ARG_TOP_K"),
    _f("--top-p", value=NUM, env="LLAMA_ARG_TOP_P"),
    _f("--min-p", value=NUM, env="LLAMA_ARG_MIN_P"),
    _f("--top-nsigma", "--top-n-sigma", value=NUM),
    _f("--xtc-probability", value=NUM),
    _f("--xtc-threshold", value=NUM),
    _f("--typical", "--typical-p", value=NUM),
    _f("--repeat-last-n", value=_int(-1)),
    _f("--repeat-penalty", value=NUM, env="LLAMA_ARG_REPEAT_PENALTY"),
    _f("--presence-penalty", value=NUM, env="LLAMA_ARG_PRESENCE_PENALTY"),
    _f("--frequency-penalty", value=NUM, env="LLAMA_ARG_FREQUENCY_PENALTY"),
    _f("--dry-multiplier", value=NUM),
    _f("--dry-base", value=NUM),
    _f("--dry-allowed-length", value=_int(0)),
    _f("--dry-penalty-last-n", value=_int(-1)),
    _f("--dry-sequence-breaker", value=TEXT),
    _f("--adaptive-target", value=NUM),
    _f("--adaptive-decay", value=NUM),
    _f("--dynatemp-range", value=NUM),
    _f("--dynatemp-exp", value=NUM),
    _f("--mirostat", value=_choice("0", "1", "2")),
    _f("--mirostat-lr", value=NUM),
    _f("--mirostat-ent", value=NUM),
    _f("--logit-bias", "-l", value=TEXT),
    _f("--grammar", value=TEXT),
    _f("--grammar-file", value=TEXT, forbidden=f"{_HOST_FILE}; pass the grammar inline with --grammar"),
    _f("--json-schema", "-j", value=TEXT),
    _f("--json-schema-file", "-jf", value=TEXT, forbidden=f"{_HOST_FILE}; pass the schema inline with --json-schema"),
    _f("--backend-sampling", "-bs", env="LLAMA_ARG_BACKEND_SAMPLING"),
    # ---- speculative
    _f("--spec-draft-hf", "-hfd", "-hfrd", "--hf-repo-draft", value=TEXT, env="LLAMA_ARG_SPEC_DRAFT_HF_REPO",
       forbidden="makes llama-server download a draft model by itself, bypassing vnode's model store and memory "
                 "check; draft models are not supported yet (ngram speculative decoding via --spec-type is)"),
    _f("--spec-draft-threads", "-td", "--threads-draft", value=_int(-1)),
    _f("--spec-draft-threads-batch", "-tbd", "--threads-batch-draft", value=_int(-1)),
    _f("--spec-draft-cpu-mask", "-Cd", "--cpu-mask-draft", value=_HEX),
    _f("--spec-draft-cpu-range", "-Crd", "--cpu-range-draft", value=_RANGE),
    _f("--spec-draft-cpu-strict", "--cpu-strict-draft", value=_BIT),
    _f("--spec-draft-prio", "--prio-draft", value=_PRIO),
    _f("--spec-draft-poll", "--poll-draft", value=_BIT),
    _f("--spec-draft-cpu-mask-batch", "-Cbd", "--cpu-mask-batch-draft", value=_HEX),
    _f("--spec-draft-cpu-strict-batch", "--cpu-strict-batch-draft", value=_BIT),
    _f("--spec-draft-prio-batch", "--prio-batch-draft", value=_PRIO),
    _f("--spec-draft-poll-batch", "--poll-batch-draft", value=_BIT),
    _f("--spec-draft-override-tensor", "-otd", "--override-tensor-draft", value=TEXT),
    _f("--spec-draft-cpu-moe", "-cmoed", "--cpu-moe-draft", env="LLAMA_ARG_SPEC_DRAFT_CPU_MOE"),
    _f("--spec-draft-n-cpu-moe", "--spec-draft-ncmoe", "-ncmoed", "--n-cpu-moe-draft", value=_int(0),
       env="LLAMA_ARG_SPEC_DRAFT_N_CPU_MOE"),
    _f("--spec-draft-n-max", value=_int(0), env="LLAMA_ARG_SPEC_DRAFT_N_MAX"),
    _f("--spec-draft-n-min", value=_int(0), env="LLAMA_ARG_SPEC_DRAFT_N_MIN"),
    _f("--spec-synth-len", value=NUM, env="LLAMA_ARG_SPEC_SYNTH_LEN"),
    _f("--spec-synth-rates", value=_CSV_NUM, env="LLAMA_ARG_SPEC_SYNTH_RATES"),
    _f("--spec-draft-p-split", "--draft-p-split", value=NUM, env="LLAMA_ARG_SPEC_DRAFT_P_SPLIT"),
    _f("--spec-draft-p-min", "--draft-p-min", value=NUM, env="LLAMA_ARG_SPEC_DRAFT_P_MIN"),
    _f("--spec-draft-backend-sampling", neg=("--no-spec-draft-backend-sampling",),
       env="LLAMA_ARG_SPEC_DRAFT_BACKEND_SAMPLING"),
    _f("--spec-draft-sampling", value=_choice("greedy", "probabilistic"), env="LLAMA_ARG_SPEC_DRAFT_SAMPLING"),
    _f("--spec-draft-device", "-devd", "--device-draft", value=_DEVICES),
    _f("--spec-draft-ngl", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft", value=_NGL,
       env="LLAMA_ARG_N_GPU_LAYERS_DRAFT"),
    _f("--spec-draft-model", "-md", "--model-draft", value=TEXT, env="LLAMA_ARG_SPEC_DRAFT_MODEL",
       forbidden="reads a draft model from a path on the Mac; draft models are not supported yet "
                 "(ngram speculative decoding via --spec-type is)"),
    _f("--spec-type", value=_SPEC_TYPE, env="LLAMA_ARG_SPEC_TYPE"),
    *(_f(f"--spec-ngram-{n}", value=_int(0)) for n in (
        "mod-n-min", "mod-n-max", "mod-n-match", "simple-size-n", "simple-size-m", "simple-min-hits",
        "map-k-size-n", "map-k-size-m", "map-k-min-hits", "map-k4v-size-n", "map-k4v-size-m", "map-k4v-min-hits")),
    _f("--spec-default"),
    # ---- server
    _f("--lookup-cache-static", "-lcs", value=TEXT, forbidden=_HOST_FILE),
    _f("--lookup-cache-dynamic", "-lcd", value=TEXT, forbidden="reads and writes a cache file at a path on the Mac"),
    _f("--kv-unified-per-slot", value=_int(1), env="LLAMA_ARG_KV_UNIFIED_PER_SLOT", role="kv_unified_per_slot"),
    _f("--ctx-checkpoints", "-ctxcp", "--swa-checkpoints", value=_int(0), env="LLAMA_ARG_CTX_CHECKPOINTS"),
    _f("--checkpoint-min-step", "-cms", value=_int(0), env="LLAMA_ARG_CHECKPOINT_MIN_SPACING_NT"),
    _f("--cache-ram", "-cram", value=_int(-1), env="LLAMA_ARG_CACHE_RAM", role="cache_ram"),
    _f("--kv-unified", "-kvu", neg=("--no-kv-unified", "-no-kvu"), env="LLAMA_ARG_KV_UNIFIED"),
    _f("--cache-idle-slots", neg=("--no-cache-idle-slots",), env="LLAMA_ARG_CACHE_IDLE_SLOTS"),
    _f("--context-shift", neg=("--no-context-shift",), env="LLAMA_ARG_CONTEXT_SHIFT"),
    _f("--reverse-prompt", "-r", value=TEXT),
    _f("--special", "-sp"),
    _f("--warmup", neg=("--no-warmup",)),
    _f("--spm-infill"),
    _f("--pooling", value=_choice("none", "mean", "cls", "last", "rank"), env="LLAMA_ARG_POOLING"),
    _f("--parallel", "-np", value=_int(1, None, "-1"), env="LLAMA_ARG_N_PARALLEL", role="parallel"),
    _f("--cont-batching", "-cb", neg=("--no-cont-batching", "-nocb"), env="LLAMA_ARG_CONT_BATCHING"),
    _f("--mmproj", "-mm", value=TEXT, env="LLAMA_ARG_MMPROJ",
       forbidden="reads a multimodal projector from a path on the Mac; multimodal projectors are not supported yet"),
    _f("--mmproj-url", "-mmu", value=TEXT, env="LLAMA_ARG_MMPROJ_URL",
       forbidden="makes llama-server download a multimodal projector by itself, bypassing vnode's model store; "
                 "multimodal projectors are not supported yet"),
    _f("--mmproj-auto", neg=("--no-mmproj", "--no-mmproj-auto"), env="LLAMA_ARG_MMPROJ_AUTO"),
    _f("--mmproj-offload", neg=("--no-mmproj-offload",), env="LLAMA_ARG_MMPROJ_OFFLOAD"),
    _f("--mmproj-device", "-mmdev", value=_DEVICES, env="MTMD_BACKEND_DEVICE"),
    _f("--image-min-tokens", value=_int(0), env="LLAMA_ARG_IMAGE_MIN_TOKENS"),
    _f("--image-max-tokens", value=_int(0), env="LLAMA_ARG_IMAGE_MAX_TOKENS"),
    _f("--mtmd-batch-max-tokens", value=_int(0), env="LLAMA_ARG_MTMD_BATCH_MAX_TOKENS"),
    _f("--video-fps", value=NUM, env="LLAMA_ARG_VIDEO_FPS"),
    _f("--video-timestamp-interval", value=_int(0), env="LLAMA_ARG_VIDEO_TIMESTAMP_INTERVAL"),
    _f("--video-ffmpeg-dir", value=TEXT, env="LLAMA_ARG_VIDEO_FFMPEG_DIR",
       forbidden="runs ffmpeg and ffprobe from a directory on the Mac"),
    _f("--alias", "-a", value=TEXT, env="LLAMA_ARG_ALIAS"),
    _f("--tags", value=TEXT, env="LLAMA_ARG_TAGS"),
    _f("--embd-normalize", value=INT),
    _f("--host", value=TEXT, env="LLAMA_ARG_HOST", role="host"),
    _f("--port", value=_int(1, 65535), env="LLAMA_ARG_PORT", role="port"),
    _f("--reuse-port", env="LLAMA_ARG_REUSE_PORT",
       forbidden="lets another process bind the same port, which defeats vnode's check that each port has one pod"),
    _f("--path", value=TEXT, env="LLAMA_ARG_STATIC_PATH", forbidden="serves files from a directory on the Mac"),
    _f("--cors-origins", value=TEXT, env="LLAMA_ARG_CORS_ORIGINS"),
    _f("--cors-methods", value=TEXT, env="LLAMA_ARG_CORS_METHODS"),
    _f("--cors-headers", value=TEXT, env="LLAMA_ARG_CORS_HEADERS"),
    _f("--cors-credentials", neg=("--no-cors-credentials",), env="LLAMA_ARG_CORS_CREDENTIALS"),
    _f("--api-prefix", value=TEXT, env="LLAMA_ARG_API_PREFIX"),
    _f("--ui-config", "--webui-config", value=TEXT, env="LLAMA_ARG_UI_CONFIG"),
    _f("--ui-config-file", "--webui-config-file", value=TEXT, env="LLAMA_ARG_UI_CONFIG_FILE",
       forbidden=f"{_HOST_FILE}; pass the settings inline with --ui-config"),
    _f("--ui-mcp-proxy", "--webui-mcp-proxy", neg=("--no-ui-mcp-proxy", "--no-webui-mcp-proxy"),
       env="LLAMA_ARG_UI_MCP_PROXY", forbidden="turns the server into a proxy that reaches arbitrary network addresses"),
    _f("--tools", value=TEXT, env="LLAMA_ARG_TOOLS",
       forbidden="gives the model built-in tools that read and write files and run shell commands on the Mac"),
    _f("--tools-runtime", value=TEXT, env="LLAMA_ARG_TOOLS_RUNTIME",
       forbidden="runs tools through docker, podman or ssh from the Mac"),
    _f("--mcp-servers-config", value=TEXT, env="LLAMA_ARG_MCP_SERVERS_CONFIG",
       forbidden="reads MCP server definitions from a path on the Mac and starts or reaches those servers"),
    _f("--mcp-servers-json", value=TEXT, env="LLAMA_ARG_MCP_SERVERS_JSON",
       forbidden="starts or reaches MCP servers (commands and network addresses) from the Mac"),
    _f("--agent", "-ag", neg=("--no-agent", "-no-ag"), env="LLAMA_ARG_AGENT",
       forbidden="enables the CORS proxy and all built-in tools, which read and write files and run shell commands on the Mac"),
    _f("--ui", "--webui", neg=("--no-ui", "--no-webui"), env="LLAMA_ARG_UI"),
    _f("--embeddings", "--embedding", env="LLAMA_ARG_EMBEDDINGS"),
    _f("--reranking", "--rerank", env="LLAMA_ARG_RERANKING"),
    _f("--api-key", value=TEXT, env="LLAMA_API_KEY", role="api_key"),
    _f("--api-key-file", value=TEXT, env="LLAMA_ARG_API_KEY_FILE",
       forbidden=f"{_HOST_FILE}; pass the key with --api-key or LLAMA_API_KEY from a Secret"),
    _f("--ssl-key-file", value=TEXT, env="LLAMA_ARG_SSL_KEY_FILE",
       forbidden=f"{_HOST_FILE}; terminate TLS in front of the pod instead (Service, Ingress or a proxy)"),
    _f("--ssl-cert-file", value=TEXT, env="LLAMA_ARG_SSL_CERT_FILE",
       forbidden=f"{_HOST_FILE}; terminate TLS in front of the pod instead (Service, Ingress or a proxy)"),
    _f("--chat-template-kwargs", value=TEXT, env="LLAMA_ARG_CHAT_TEMPLATE_KWARGS"),
    _f("--timeout", "-to", value=_int(0), env="LLAMA_ARG_TIMEOUT"),
    _f("--sse-ping-interval", value=_int(-1), env="LLAMA_ARG_SSE_PING_INTERVAL"),
    _f("--threads-http", value=_int(-1), env="LLAMA_ARG_THREADS_HTTP"),
    _f("--cache-prompt", neg=("--no-cache-prompt",), env="LLAMA_ARG_CACHE_PROMPT"),
    _f("--cache-reuse", value=_int(0), env="LLAMA_ARG_CACHE_REUSE"),
    _f("--metrics", env="LLAMA_ARG_ENDPOINT_METRICS"),
    _f("--props", env="LLAMA_ARG_ENDPOINT_PROPS"),
    _f("--slots", neg=("--no-slots",), env="LLAMA_ARG_ENDPOINT_SLOTS"),
    _f("--slot-save-path", value=TEXT, forbidden="writes KV-cache files to a directory on the Mac"),
    _f("--media-path", value=TEXT, forbidden="lets requests read files from a directory on the Mac"),
    _f("--models-dir", value=TEXT, env="LLAMA_ARG_MODELS_DIR",
       forbidden="starts the multi-model router, which loads models from a directory on the Mac; run one model per pod"),
    _f("--models-preset", value=TEXT, env="LLAMA_ARG_MODELS_PRESET",
       forbidden="starts the multi-model router from a preset file on the Mac; run one model per pod"),
    _f("--models-max", value=TEXT, env="LLAMA_ARG_MODELS_MAX",
       forbidden="configures the multi-model router, which vnode does not run; run one model per pod"),
    _f("--models-autoload", neg=("--no-models-autoload",), env="LLAMA_ARG_MODELS_AUTOLOAD",
       forbidden="configures the multi-model router, which vnode does not run; run one model per pod"),
    _f("--jinja", neg=("--no-jinja",), env="LLAMA_ARG_JINJA"),
    _f("--reasoning-format", value=_choice("none", "deepseek", "deepseek-legacy", "auto"), env="LLAMA_ARG_THINK"),
    _f("--reasoning", "-rea", value=_choice(*_ON_OFF_AUTO), env="LLAMA_ARG_REASONING"),
    _f("--reasoning-effort", value=_regex(r"[A-Za-z0-9_-]+", "a level such as low, medium or high"),
       env="LLAMA_ARG_REASONING_EFFORT"),
    _f("--reasoning-budget", value=_int(-1), env="LLAMA_ARG_THINK_BUDGET"),
    _f("--reasoning-budget-message", value=TEXT, env="LLAMA_ARG_THINK_BUDGET_MESSAGE"),
    _f("--reasoning-preserve", neg=("--no-reasoning-preserve",), env="LLAMA_ARG_REASONING_PRESERVE"),
    _f("--chat-template", value=_NAME, env="LLAMA_ARG_CHAT_TEMPLATE"),
    _f("--chat-template-file", value=TEXT, env="LLAMA_ARG_CHAT_TEMPLATE_FILE",
       forbidden=f"{_HOST_FILE}; use --chat-template with a built-in template name, or --jinja with the model's own"),
    _f("--skip-chat-parsing", neg=("--no-skip-chat-parsing",), env="LLAMA_ARG_SKIP_CHAT_PARSING"),
    _f("--prefill-assistant", neg=("--no-prefill-assistant",), env="LLAMA_ARG_PREFILL_ASSISTANT"),
    _f("--slot-prompt-similarity", "-sps", value=NUM),
    _f("--lora-init-without-apply"),
    _f("--sleep-idle-seconds", value=_int(-1)),
    _f("--log-prompts-dir", value=TEXT, forbidden="writes every prompt to a directory on the Mac"),
    *(_f(name, forbidden=_DOWNLOADS) for name in (
        "--embd-gemma-default", "--fim-qwen-1.5b-default", "--fim-qwen-3b-default", "--fim-qwen-7b-default",
        "--fim-qwen-7b-spec", "--fim-qwen-14b-spec", "--fim-qwen-30b-default", "--gpt-oss-20b-default",
        "--gpt-oss-120b-default", "--vision-gemma-4b-default", "--vision-gemma-12b-default")),
)

_PRINTS_AND_EXITS = "prints information and exits; a serving pod cannot use it"
# Known spellings vnode refuses as InvalidArgs, with what to use instead.
UNSUPPORTED_FLAGS: dict[str, str] = {
    **{n: _PRINTS_AND_EXITS for n in ("-h", "--help", "--usage", "--version", "-cl", "--cache-list",
                                     "--completion-bash", "--list-devices")},
    **{n: "was removed from llama-server; use --spec-draft-n-max or --spec-ngram-mod-n-max"
       for n in ("--draft", "--draft-n", "--draft-max")},
    **{n: "was removed from llama-server; use --spec-draft-n-min or --spec-ngram-mod-n-min"
       for n in ("--draft-min", "--draft-n-min")},
    "--spec-ngram-size-n": "was removed from llama-server; use --spec-ngram-<type>-size-n or --spec-ngram-mod-n-match",
    "--spec-ngram-size-m": "was removed from llama-server; use --spec-ngram-<type>-size-m",
    "--spec-ngram-min-hits": "was removed from llama-server; use --spec-ngram-<type>-min-hits",
    # Older llama-server builds (not in --help any more): point at the replacement.
    "--no-mmap": "is not in this llama-server build; use --load-mode none",
    "--mmap": "is not in this llama-server build; use --load-mode mmap",
    "--mlock": "is not in this llama-server build; use --load-mode mmap+mlock",
    "--direct-io": "is not in this llama-server build; use --load-mode dio",
    "-dio": "is not in this llama-server build; use --load-mode dio",
}
UNSUPPORTED_ENV: dict[str, str] = {
    "LLAMA_ARG_DRAFT_MAX": "was removed from llama-server; use LLAMA_ARG_SPEC_DRAFT_N_MAX",
    "LLAMA_ARG_DRAFT_MIN": "was removed from llama-server; use LLAMA_ARG_SPEC_DRAFT_N_MIN",
    "LLAMA_ARG_NO_MMAP": "is not read by this llama-server build; use LLAMA_ARG_LOAD_MODE=none",
    "LLAMA_ARG_MLOCK": "is not read by this llama-server build; use LLAMA_ARG_LOAD_MODE=mmap+mlock",
}
# Environment variables that would change what the native process loads or runs.
DENIED_ENV: dict[str, str] = {
    "PATH": "llama-server runs helper programs (ffmpeg) found on PATH; vnode sets PATH itself",
    "XDG_CONFIG_HOME": "llama-server reads config.ini from it, which could turn on refused options",
    "GGML_BACKEND_PATH": "makes llama-server load a shared library from a path on the Mac",
}
DENIED_ENV_PREFIXES: dict[str, str] = {
    "DYLD_": "it makes the dynamic loader inject or replace libraries in the native process",
    "LD_": "it makes the dynamic loader inject or replace libraries in the native process",
}

_HOST_REASON = "binds an address other than the pod IP (0.0.0.0 and :: are taken to mean the pod IP)"
_PORT_REASON = "binds a port that is not one of the container's declared containerPorts"


def _build_index() -> tuple[dict[str, tuple[FlagSpec, bool]], dict[str, tuple[FlagSpec, bool]]]:
    flags: dict[str, tuple[FlagSpec, bool]] = {}
    envs: dict[str, tuple[FlagSpec, bool]] = {}
    for spec in FLAGS:
        for positive, names in ((True, spec.names), (False, spec.negatives)):
            for name in names:
                if name in flags or name in UNSUPPORTED_FLAGS:
                    raise AssertionError(f"llama-server flag {name} listed twice")
                flags[name] = (spec, positive)
        if spec.env:
            envs[spec.env] = (spec, True)
            if spec.negatives and spec.env.startswith("LLAMA_ARG_"):
                envs[spec.env.replace("LLAMA_ARG_", "LLAMA_ARG_NO_", 1)] = (spec, False)
    return flags, envs


_FLAG_INDEX, _ENV_INDEX = _build_index()


def lookup_flag(name: str) -> tuple[FlagSpec, bool] | None:
    """The spec of one spelling (and whether it is the positive one), or None if llama-server has no such flag."""
    if name.startswith("--"):
        name = name.replace("_", "-")
    return _FLAG_INDEX.get(name)


def all_forbidden_flags() -> dict[str, str]:
    """Every refused spelling -> why (for docs); --host and --port are refused only for some values."""
    out = {name: spec.forbidden for spec in FLAGS if spec.forbidden for name in spec.names}
    out["--host"] = _HOST_REASON
    out["--port"] = _PORT_REASON
    return out


def all_forbidden_env() -> dict[str, str]:
    """Every refused environment variable (or prefix, ending in `_`) -> why, for docs."""
    out = {spec.env: f"same as {spec.names[0]}: {spec.forbidden}" for spec in FLAGS if spec.forbidden and spec.env}
    out["LLAMA_ARG_HOST"] = f"same as --host: {_HOST_REASON}"
    out["LLAMA_ARG_PORT"] = f"same as --port: {_PORT_REASON}"
    out.update(DENIED_ENV)
    out.update({f"{prefix}*": why for prefix, why in DENIED_ENV_PREFIXES.items()})
    return out


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Setting:
    spec: FlagSpec
    positive: bool
    value: str | None
    where: str  # how the user wrote it: "--port 9000" / "LLAMA_ARG_PORT=9000"
    spelling: str | None = None  # set for command-line occurrences


def _bad_value(flag: str, raw: str, err: ValueError) -> TranslateError:
    return TranslateError(INVALID_ARGS, f"invalid value {raw!r} for {flag}: expected {err}.")


def _refuse(where: str, spec: FlagSpec) -> TranslateError:
    return TranslateError(FORBIDDEN_FLAG, f"{where} is not allowed on this node: it {spec.forbidden}.")


def _parse_args(tokens: list[str]) -> list[_Setting]:
    out: list[_Setting] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        i += 1
        if not tok.startswith("-") or tok in ("-", "--"):
            raise TranslateError(
                INVALID_ARGS,
                f"unexpected argument {tok!r}: llama-server takes only flags (a value must follow the flag it belongs to).",
            )
        name, eq, inline = tok.partition("=")
        if name.startswith("--"):
            name = name.replace("_", "-")  # llama-server accepts --ctx_size too
        hit = _FLAG_INDEX.get(name)
        if hit is None:
            if name in UNSUPPORTED_FLAGS:
                raise TranslateError(INVALID_ARGS, f"flag {name} {UNSUPPORTED_FLAGS[name]}.")
            raise TranslateError(
                INVALID_ARGS,
                f"unknown or unsupported llama-server flag {name}; see `llama-server --help` for the flags vnode accepts.",
            )
        spec, positive = hit
        if positive and spec.forbidden:
            raise _refuse(name, spec)
        if spec.value is None:
            if eq:
                raise TranslateError(INVALID_ARGS, f"llama-server flag {name} takes no value (got {tok!r}).")
            out.append(_Setting(spec, positive, None, name, name))
            continue
        if eq:
            raw = inline
        elif i < len(tokens):
            raw = tokens[i]
            i += 1
        else:
            raise TranslateError(INVALID_ARGS, f"llama-server flag {name} needs a value ({spec.value.describe()}).")
        try:
            value = spec.value.check(raw)
        except ValueError as err:
            raise _bad_value(name, raw, err) from None
        out.append(_Setting(spec, positive, value, f"{name} {raw}", name))
    return out


def _parse_env(env: Mapping[str, str]) -> list[_Setting]:
    out: list[_Setting] = []
    for key, raw in env.items():
        if key in DENIED_ENV:
            raise TranslateError(FORBIDDEN_FLAG, f"environment variable {key} is not allowed on this node: {DENIED_ENV[key]}.")
        for prefix, why in DENIED_ENV_PREFIXES.items():
            if key.startswith(prefix):
                raise TranslateError(FORBIDDEN_FLAG, f"environment variable {key} is not allowed on this node: {why}.")
        hit = _ENV_INDEX.get(key)
        if hit is None:
            if key in UNSUPPORTED_ENV:
                raise TranslateError(INVALID_ARGS, f"environment variable {key} {UNSUPPORTED_ENV[key]}.")
            if key.startswith("LLAMA_ARG_"):
                raise TranslateError(
                    INVALID_ARGS,
                    f"unknown or unsupported llama-server environment variable {key}; "
                    "see the (env: ...) names in `llama-server --help`.",
                )
            continue  # an ordinary variable for the process
        spec, positive = hit
        where = f"{key}={raw}"
        if spec.value is not None:
            if spec.forbidden:
                raise _refuse(f"environment variable {key} (same as {spec.names[0]})", spec)
            try:
                value = spec.value.check(raw)
            except ValueError as err:
                raise _bad_value(f"environment variable {key}", raw, err) from None
            out.append(_Setting(spec, True, value, where))
            continue
        if not positive:  # LLAMA_ARG_NO_X: any value means "no"
            out.append(_Setting(spec, False, None, where))
            continue
        if spec.negatives:  # a switch pair: llama-server insists on a boolean
            if raw not in _TRUTHY and raw not in _FALSEY:
                raise TranslateError(
                    INVALID_ARGS,
                    f"invalid value {raw!r} for environment variable {key}: expected one of {', '.join(_TRUTHY + _FALSEY)}.",
                )
            on = raw in _TRUTHY
        else:  # a plain switch: only a truthy value turns it on, anything else is ignored
            on = raw in _TRUTHY
            if not on:
                continue
        if on and spec.forbidden:
            raise _refuse(f"environment variable {key} (same as {spec.names[0]})", spec)
        out.append(_Setting(spec, on, None, where))
    return out


# --------------------------------------------------------------------------- volumes and model paths


def _norm_abs(path: str) -> str:
    """A container path made absolute and normal: `..` resolved lexically, as the kernel would."""
    p = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + p.lstrip("/")


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _volume_kind(vol: Volume) -> str | None:
    for kind in ("host_path", "empty_dir", "config_map", "secret", "persistent_volume_claim"):
        if getattr(vol, kind) is not None:
            return kind
    return None


_KIND_NAMES = {"persistent_volume_claim": "a persistentVolumeClaim", None: "of a type vnode does not support"}
_VOLUME_HELP = ("vnode supports hostPath volumes inside the model store ({store}), emptyDir, configMap and secret")


def _check_mounts(spec: PodSpecIn, container: ContainerIn, store: Path) -> dict[str, Path]:
    """Validate the container's volumeMounts; hostPath mount name -> host directory (or file)."""
    volumes = {v.name: v for v in spec.volumes}
    host_dirs: dict[str, Path] = {}
    help_ = _VOLUME_HELP.format(store=store)
    for m in container.volume_mounts:
        vol = volumes.get(m.name)
        if vol is None:
            raise TranslateError(UNSUPPORTED_VOLUME, f"volumeMount {m.name!r} names no volume of the pod.")
        if m.sub_path is not None:
            parts = m.sub_path.split("/")
            if m.sub_path.startswith("/") or ".." in parts:
                raise TranslateError(
                    UNSUPPORTED_VOLUME,
                    f"volumeMount {m.name!r} has subPath {m.sub_path!r}; a subPath must be relative and must not contain '..'.",
                )
        kind = _volume_kind(vol)
        if kind == "host_path":
            raw = (vol.host_path or {}).get("path")
            if not isinstance(raw, str) or not raw.startswith("/"):
                raise TranslateError(UNSUPPORTED_VOLUME, f"hostPath volume {vol.name!r} needs an absolute path.")
            host = Path(raw)
            if m.sub_path:
                host = host / m.sub_path
            host = host.resolve()
            if not _under(host, store):
                raise TranslateError(
                    UNSUPPORTED_VOLUME,
                    f"hostPath volume {vol.name!r} points at {host}, which is outside vnode's model store {store}; "
                    f"only hostPaths inside the model store can be mounted (or load the model with -hf).",
                )
            host_dirs[m.name] = host
        elif kind in ("empty_dir", "config_map", "secret"):
            continue
        elif kind is None and _norm_abs(m.mount_path) == SERVICE_ACCOUNT_MOUNT:
            continue  # the API server's automatic token volume: nothing on the Mac reads it
        else:
            raise TranslateError(
                UNSUPPORTED_VOLUME, f"volume {vol.name!r} is {_KIND_NAMES.get(kind, kind)}; {help_}."
            )
    return host_dirs


def _model_host_path(where: str, raw: str, container: ContainerIn, host_dirs: dict[str, Path], store: Path) -> str:
    fix = (f"mount a hostPath volume inside vnode's model store ({store}) and point -m at a file under its mountPath, "
           "or use -hf <user>/<repo>[:quant] / --model-url instead")
    if not raw:
        raise TranslateError(INVALID_MODEL_PATH, f"{where}: the model path is empty; {fix}.")
    if raw.startswith("/"):
        path = _norm_abs(raw)
    elif container.working_dir:
        path = _norm_abs(posixpath.join(container.working_dir, raw))
    else:
        raise TranslateError(INVALID_MODEL_PATH, f"{where}: the model path {raw!r} is relative; use an absolute path: {fix}.")
    best: VolumeMount | None = None
    for m in container.volume_mounts:
        mp = _norm_abs(m.mount_path)
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(_norm_abs(best.mount_path))):
            best = m
    if best is None:
        raise TranslateError(INVALID_MODEL_PATH, f"{where}: {path} is not inside any volumeMount of the container; {fix}.")
    host_root = host_dirs.get(best.name)
    if host_root is None:
        raise TranslateError(
            INVALID_MODEL_PATH, f"{where}: {path} is on volume {best.name!r}, which is not a hostPath in the model store; {fix}."
        )
    rel = posixpath.relpath(path, _norm_abs(best.mount_path))
    host = (host_root if rel == "." else host_root / rel).resolve()
    if not _under(host, store):  # a symlink inside the store pointing out of it
        raise TranslateError(INVALID_MODEL_PATH, f"{where}: {path} resolves to {host}, outside the model store; {fix}.")
    return str(host)


_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_HF_QUANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _hf_source(repo_where: str, repo_raw: str, file: _Setting | None) -> ModelSource:
    repo, _, quant = repo_raw.partition(":")
    if not _HF_REPO_RE.match(repo) or ".." in repo or (quant and not _HF_QUANT_RE.match(quant)) or repo_raw.endswith(":"):
        raise TranslateError(
            INVALID_ARGS, f"{repo_where}: expected a Hugging Face repository <user>/<model>[:quant], e.g. ggml-org/gemma-3-270m-GGUF:Q4_K_M."
        )
    fname = None
    if file is not None:
        fname = file.value or ""
        parts = fname.split("/")
        if not fname or fname.startswith("/") or "\\" in fname or any(p in ("", ".", "..") for p in parts):
            raise TranslateError(INVALID_ARGS, f"{file.where}: expected a file path inside the repository, e.g. model-Q4_K_M.gguf.")
    return ModelSource(kind="hf", repo=repo, quant=quant or None, file=fname)


def _url_source(where: str, raw: str) -> ModelSource:
    u = urlsplit(raw)
    if u.scheme not in ("http", "https") or not u.hostname or any(c.isspace() for c in raw):
        raise TranslateError(INVALID_ARGS, f"{where}: --model-url needs an http:// or https:// URL.")
    return ModelSource(kind="url", url=raw)


# --------------------------------------------------------------------------- translate


def _server_command(first: str, binary: str) -> bool:
    base = posixpath.basename(first)
    return base == SERVER_NAME or base == posixpath.basename(binary)


def translate(
    *,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    spec: PodSpecIn,
    container: ContainerIn,
    env: dict[str, str],
    runtime: RuntimeTable,
    pod_ip: str,
    model_store: Path,
    sandbox: Path,
) -> LaunchSpec:
    """One container -> LaunchSpec, or TranslateError naming what to change.

    - args (after any command elements past the server itself) and LLAMA_ARG_* env are
      checked against FLAGS; a flag beats its env var, as in llama-server.
    - the model flags (-m, -hf/-hff, -mu, -hft), --host, --port and --api-key leave the args:
      the model becomes `model`, the supervisor adds `--model <host path>`; args start with
      `--host <pod_ip> --port <port>`; the API key moves to LLAMA_API_KEY (not visible in ps).
      Their env vars leave the process env too (HF_TOKEN stays).
    - `--host` may be the pod IP, 0.0.0.0 or :: (inside a pod these mean the pod's address).
    - workdir: `sandbox`, or `sandbox/<workingDir without its leading />` (`..` cannot leave it).
    - env: the container's env plus HOME=sandbox (HOME is always overridden).
    """
    store = model_store.resolve()
    binary = runtime.resolve(container.image)
    if binary is None:
        raise TranslateError(
            UNSUPPORTED_IMAGE,
            f"image {container.image!r} has no native runtime on this node; accepted images: "
            + ", ".join(runtime.patterns()) + ".",
        )

    tokens = list(container.args)
    if container.command:
        if not _server_command(container.command[0], binary):
            raise TranslateError(
                UNSUPPORTED_COMMAND,
                f"command {container.command[0]!r} is not the server; on this node a container can only run "
                f"{SERVER_NAME} (omit command, or start it with {SERVER_NAME} / /app/{SERVER_NAME}).",
            )
        tokens = list(container.command[1:]) + tokens

    host_dirs = _check_mounts(spec, container, store)
    cli = _parse_args(tokens)
    from_env = _parse_env(env)

    # Effective value per option: the last command-line occurrence, else the env var.
    effective: dict[FlagSpec, _Setting] = {s.spec: s for s in from_env}
    effective.update({s.spec: s for s in cli})
    by_role = {s.spec.role: s for s in effective.values() if s.spec.role}

    # ---- model
    model_roles = ("model_path", "hf_repo", "model_url")
    if any(s.spec.role in model_roles for s in cli):  # a model on the command line beats any in env
        by_role = {r: s for r, s in by_role.items() if r not in model_roles or s.spelling is not None}
    sources = [by_role[r] for r in model_roles if r in by_role]
    if len(sources) > 1:
        raise TranslateError(
            INVALID_ARGS, "give the model one way only; found " + " and ".join(s.where for s in sources) + "."
        )
    hf_file = by_role.get("hf_file")
    if not sources:
        if hf_file is not None:
            raise TranslateError(INVALID_ARGS, f"{hf_file.where} needs -hf/--hf-repo <user>/<repo> as well.")
        raise TranslateError(
            MISSING_MODEL,
            "no model given: add -hf <user>/<repo>[:quant] (e.g. -hf ggml-org/gemma-3-270m-GGUF:Q4_K_M), "
            "--model-url <url>, or -m <path> on a hostPath volume inside the model store.",
        )
    src = sources[0]
    role = src.spec.role
    if hf_file is not None and role != "hf_repo":
        raise TranslateError(INVALID_ARGS, f"{hf_file.where} only goes with -hf/--hf-repo, not with {src.where}.")
    if role == "hf_repo":
        model = _hf_source(src.where, src.value or "", hf_file)
    elif role == "model_url":
        model = _url_source(src.where, src.value or "")
    else:
        model = ModelSource(kind="path", path=_model_host_path(src.where, src.value or "", container, host_dirs, store))

    # ---- address and port
    host = by_role.get("host")
    if host is not None and host.value not in (pod_ip, "0.0.0.0", "::"):
        raise TranslateError(
            FORBIDDEN_FLAG,
            f"{host.where} is not allowed on this node: the server binds the pod IP {pod_ip} "
            "(0.0.0.0 and :: are taken to mean it); binding another address would reach outside the pod. Drop --host.",
        )
    declared = [p.container_port for p in container.ports]
    for p in container.ports:
        if p.host_port and p.host_port != p.container_port:
            raise TranslateError(
                INVALID_ARGS,
                f"hostPort {p.host_port} differs from containerPort {p.container_port}: on this node the server binds "
                "the node's address directly (like hostNetwork), so a hostPort must equal its containerPort or be omitted.",
            )
    port_setting = by_role.get("port")
    if port_setting is not None:
        port = int(port_setting.value or 0)
        if declared and port not in declared:
            raise TranslateError(
                FORBIDDEN_FLAG,
                f"{port_setting.where} is not allowed: it does not match the declared containerPort "
                f"({', '.join(map(str, declared))}); make them equal, or drop --port to use the containerPort.",
            )
    else:
        port = declared[0] if declared else DEFAULT_PORT

    # ---- numbers for the memory estimate
    def _num(role: str) -> int | None:
        s = by_role.get(role)
        return int(s.value) if s is not None and s.value is not None else None

    parallel = _num("parallel")
    # llama-server's automatic slot count comes with a unified KV cache; so does --kv-unified.
    kv_unified = parallel is None or parallel < 1 or any(s.spec.names[0] == "--kv-unified" and s.positive for s in cli)
    if parallel is None or parallel < 1:
        parallel = AUTO_PARALLEL
    ctx_size = _num("ctx_size")
    per_slot = _num("kv_unified_per_slot")
    if ctx_size is None and per_slot is not None:
        ctx_size = parallel * per_slot  # "without -c, the shared KV pool is sized to n_parallel*N"
    if ctx_size == 0:
        ctx_size = None  # 0 = the model's training context
    n_ubatch = _num("n_ubatch")
    fa = by_role.get("flash_attn")
    flash_attn = fa is None or (fa.value or "auto") not in _FALSEY  # auto counts as on (Metal has it)
    swa_full = "swa_full" in by_role and by_role["swa_full"].positive
    cache_ram = _num("cache_ram")
    cache_k = by_role["cache_type_k"].value if "cache_type_k" in by_role else "f16"
    cache_v = by_role["cache_type_v"].value if "cache_type_v" in by_role else "f16"

    # ---- args, env, workdir
    args = ["--host", pod_ip, "--port", str(port)]
    for s in cli:
        if s.spec.role in _CONSUMED:
            continue
        args.append(s.spec.names[0] if s.positive else s.spec.negatives[0])
        if s.value is not None:
            args.append(s.value)

    consumed_env = {f.env for f in FLAGS if f.role in _CONSUMED and f.role != "hf_token" and f.env}
    proc_env = {k: v for k, v in env.items() if k not in consumed_env}
    api_key = by_role.get("api_key")
    if api_key is not None and api_key.value is not None:
        proc_env["LLAMA_API_KEY"] = api_key.value
    proc_env["HOME"] = str(sandbox)

    token = by_role.get("hf_token")
    hf_token = (token.value if token is not None else None) or env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None

    workdir = sandbox
    if container.working_dir:
        rel = _norm_abs(container.working_dir).lstrip("/")
        if rel:
            workdir = sandbox / rel

    return LaunchSpec(
        namespace=namespace,
        pod_name=pod_name,
        pod_uid=pod_uid,
        container=container.name,
        image=container.image,
        binary=binary,
        args=args,
        env=proc_env,
        workdir=str(workdir),
        host=pod_ip,
        port=port,
        host_ports=sorted({p.host_port for p in container.ports if p.host_port}),
        model=model,
        host_volumes={name: str(path) for name, path in host_dirs.items()},
        ctx_size=ctx_size,
        parallel=parallel,
        cache_type_k=cache_k or "f16",
        cache_type_v=cache_v or "f16",
        kv_unified=kv_unified,
        n_ubatch=n_ubatch,
        flash_attn=flash_attn,
        swa_full=swa_full,
        cache_ram_mib=cache_ram if cache_ram and cache_ram > 0 else None,
        hf_token=hf_token,
    )
