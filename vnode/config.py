"""Agent settings: one typed object built from flags, VNODE_* environment and a config file.

Precedence is flags > environment > config file > defaults, so an operator can keep a
launchd-managed file and still override one value on the command line. Validation errors
are turned into one line that names the flag (see `SettingsError`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from vnode.pods import thresholds

DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
ENV_PREFIX = "VNODE_"


def default_node_name() -> str:
    """The kubelet's default: the hostname, lowercased, first label kept whole."""
    return socket.gethostname().lower()


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "vnode"


class SettingsError(ValueError):
    """A setting failed validation; the message names the flag and is fit for one line."""


class _YamlFileSource(PydanticBaseSettingsSource):
    """Reads the optional config file named by --config / VNODE_CONFIG (YAML or JSON)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is None:
            return
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise SettingsError(f"--config: cannot read {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"--config: {path} is not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise SettingsError(f"--config: {path} must hold a mapping of settings")
        self._data = {str(k).replace("-", "_"): v for k, v in loaded.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    """Everything `vnode run` needs. Field names map to flags (`--node-name`) and env
    (`VNODE_NODE_NAME`)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    kubeconfig: Path = Field(description="kubeconfig with the node's own credentials (system:node:<name>)")
    node_name: str = Field(default_factory=default_node_name, description="name of the Node object")
    host_ip: ipaddress.IPv4Address | ipaddress.IPv6Address = Field(
        description="InternalIP of the node; pods listen on it and the API server reaches the kubelet API on it"
    )
    kubelet_port: int = Field(default=10250, ge=1, le=65535, description="port of the kubelet API (daemonEndpoints)")
    memory_fraction: float | None = Field(
        default=None, gt=0, le=1, description="share of unified memory offered as allocatable (default by size)"
    )
    max_pods: int = Field(default=110, ge=1, le=10000, description="pods capacity")
    register_taint: bool = Field(default=True, description="register with the llmkube.dev/accelerator=metal:NoSchedule taint")
    labels: dict[str, str] = Field(default_factory=dict, description="extra node labels (key=value)")
    force: bool = Field(default=False, description="take over a Node of this name registered by another machine")
    state_dir: Path = Field(default_factory=default_state_dir, description="where vnode keeps its state and model store")
    lease_duration_seconds: int = Field(default=40, ge=10, le=3600, description="Lease duration; renewed every quarter")
    node_status_update_seconds: float = Field(default=10, gt=0, le=300, description="how often status is computed")
    node_status_report_seconds: float = Field(default=300, gt=0, le=3600, description="unchanged status still reported this often")
    llama_server: Path | None = Field(default=None, description="llama-server binary (default: on PATH, else vnode's cached build)")
    hf_endpoint: str | None = Field(default=None, description="Hugging Face endpoint for model downloads (default: HF_ENDPOINT or the hub)")
    offline: bool = Field(default=False, description="never download: serve models only from the store")
    allow_exec_probes: bool = Field(default=False, description="allow exec probes (they run commands on this machine)")
    pod_port_range: str = Field(
        default="1024-65535",
        description="ports pod servers may bind on the host IP, FIRST-LAST: pods share the Mac's network, so a pod "
                    "must not take 22, 80 or 443 (macOS lets any user bind low ports)",
    )
    drain_quiet_seconds: float = Field(
        default=2.0, ge=0, le=60,
        description="a terminating pod's server must be idle this long before SIGTERM, within the grace period (0: signal at once, as the kubelet)",
    )
    tls_cert_file: Path | None = Field(default=None, description="kubelet API serving certificate (PEM)")
    tls_private_key_file: Path | None = Field(default=None, description="key of the serving certificate (PEM)")
    bootstrap_serving_cert: bool = Field(default=False, description="request the serving certificate with a kubelet-serving CSR (an admin approves it)")
    self_signed_serving_cert: bool = Field(default=False, description="serve the kubelet API with a self-signed certificate (API servers that verify kubelets refuse it)")
    client_ca_file: Path | None = Field(default=None, description="CA for client certificates on the kubelet API (the API server's kubelet-client)")
    streaming_connection_idle_timeout: float = Field(
        default=4 * 3600.0, gt=0, le=7 * 86400,
        description="close an exec, attach or port-forward connection with no traffic either way for this long "
                    "(duration, e.g. 4h or 30m, or seconds; the kubelet's --streaming-connection-idle-timeout)",
    )
    enable_exec: bool = Field(default=True, description="serve kubectl exec (runs commands on this machine as vnode's user; RBAC pods/exec still applies)")
    anonymous_auth: bool = Field(default=False, description="let unauthenticated requests through to authorization as system:anonymous")
    rotate_certificates: bool = Field(
        default=True,
        description="renew the node's client certificate through a CSR at 70 to 90 percent of its life, as the kubelet's "
                    "--rotate-certificates (when the kubeconfig authenticates as system:node:<node-name> with a certificate)",
    )
    require_node_identity: bool = Field(
        default=False,
        description="refuse to start (exit 2) unless the kubeconfig authenticates as system:node:<node-name> in group "
                    "system:nodes (checked with a SelfSubjectReview); without it a wrong identity is a warning",
    )
    log_dir: Path | None = Field(default=None, description="also write vnode.log (rotated) here; served read-only on the kubelet API's /logs/")
    log_format: Literal["text", "json"] = Field(default="text", description="log lines as text or JSON")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="log level")
    # Eviction under memory pressure (pods/eviction.py), with the kubelet's flags and defaults.
    eviction_hard: str = Field(
        default="memory.available<100Mi",
        description="hard eviction thresholds, e.g. memory.available<500Mi, or a percentage of memory (empty: none)",
    )
    eviction_soft: str = Field(default="", description="soft eviction thresholds, e.g. memory.available<1Gi (each needs a grace period)")
    eviction_soft_grace_period: str = Field(
        default="", validate_default=True, description="how long a soft threshold must hold before a pod is evicted, e.g. memory.available=1m30s"
    )
    eviction_minimum_reclaim: str = Field(
        default="", description="once evicting, keep on until the signal is this far above the threshold, e.g. memory.available=500Mi"
    )
    eviction_pressure_transition_period: float = Field(
        default=300.0, ge=0, le=86400,
        description="how long MemoryPressure stays True after the last breach of a threshold (duration, e.g. 5m, or seconds)",
    )
    eviction_max_pod_grace_period: int = Field(
        default=0, ge=-1, le=86400,
        description="longest grace period for a soft eviction, in seconds; the kubelet's minimum of 2 s still applies (-1: the pod's own)",
    )
    eviction_monitoring_interval: float = Field(
        default=10.0, gt=0, le=300, description="how often memory.available is compared with the thresholds; at most one eviction each time (duration or seconds)",
    )
    eviction_signal_file: Path | None = Field(
        default=None,
        description="TEST HOOK: read memory.available from this file (JSON {\"memory.available\": \"80Mi\"}, or a quantity) "
                    "instead of the machine; absent or empty file: the machine's reading",
    )

    @field_validator("node_name")
    @classmethod
    def _valid_node_name(cls, value: str) -> str:
        if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
            raise ValueError(f"{value!r} is not a valid node name (lowercase DNS-1123 subdomain)")
        return value

    @field_validator("pod_port_range")
    @classmethod
    def _valid_port_range(cls, value: str) -> str:
        parse_port_range(value)
        return value

    @property
    def pod_ports(self) -> tuple[int, int]:
        return parse_port_range(self.pod_port_range)

    @field_validator("host_ip")
    @classmethod
    def _routable_host_ip(cls, value: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
        if value.is_loopback or value.is_link_local or value.is_unspecified or value.is_multicast:
            raise ValueError(f"{value} cannot be a node InternalIP: Endpoints reject loopback, link-local and unspecified addresses")
        return value

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith("node-role.kubernetes.io/"):
                raise ValueError(f"label {key!r}: NodeRestriction forbids a node to set node-role.kubernetes.io/ labels")
        return value

    @field_validator("eviction_hard", "eviction_soft", mode="before")
    @classmethod
    def _valid_thresholds(cls, value: Any) -> str:
        statements = thresholds.parse_statements(value, sep="<")
        for signal, text in statements.items():
            thresholds.parse_threshold_value(signal, text)
        return thresholds.format_statements(statements, sep="<")

    @field_validator("eviction_minimum_reclaim", mode="before")
    @classmethod
    def _valid_reclaims(cls, value: Any) -> str:
        statements = thresholds.parse_statements(value, sep="=")
        for signal, text in statements.items():
            thresholds.parse_min_reclaim(signal, text)
        return thresholds.format_statements(statements, sep="=")

    @field_validator("eviction_soft_grace_period", mode="before")
    @classmethod
    def _valid_grace_periods(cls, value: Any, info: ValidationInfo) -> str:
        statements = thresholds.parse_statements(value, sep="=")
        # Fields validate in order: eviction_soft is known here, so a soft threshold
        # without a grace period is reported on this flag.
        thresholds.parse_thresholds(hard=None, soft=info.data.get("eviction_soft"), soft_grace_period=statements)
        return thresholds.format_statements(statements, sep="=")

    @field_validator("eviction_pressure_transition_period", "eviction_monitoring_interval",
                     "streaming_connection_idle_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return thresholds.parse_duration(value) if isinstance(value, str) else value

    @property
    def eviction_thresholds(self) -> list[thresholds.Threshold]:
        return thresholds.parse_thresholds(
            hard=self.eviction_hard, soft=self.eviction_soft,
            soft_grace_period=self.eviction_soft_grace_period, minimum_reclaim=self.eviction_minimum_reclaim,
        )

    @property
    def model_store(self) -> Path:
        return self.state_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls, _CONFIG_FILE.get()))


class _ConfigFileSlot:
    """Carries the config-file path into `settings_customise_sources`, which pydantic
    calls as a classmethod with no way to pass arguments."""

    def __init__(self) -> None:
        self._path: Path | None = None

    def get(self) -> Path | None:
        return self._path

    def set(self, path: Path | None) -> None:
        self._path = path


_CONFIG_FILE = _ConfigFileSlot()


def parse_port_range(text: str) -> tuple[int, int]:
    """"1024-65535" -> (1024, 65535), the spelling of kube-apiserver's --service-node-port-range."""
    first, sep, last = text.strip().partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        raise ValueError(f"{text!r} is not a port range FIRST-LAST, e.g. 1024-65535")
    low, high = int(first), int(last)
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{text!r}: need 1 <= FIRST <= LAST <= 65535")
    return low, high


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def load_settings(overrides: dict[str, Any], *, config_file: Path | None = None) -> Settings:
    """Build settings from flag values (None = not given), environment and file.

    Raises SettingsError with one line per bad setting, each naming its flag and env var.
    """
    flags = {k: v for k, v in overrides.items() if v is not None}
    _CONFIG_FILE.set(config_file)
    try:
        return Settings(**flags)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    finally:
        _CONFIG_FILE.set(None)


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        msg = err["msg"]
        if err["type"] == "missing":
            msg = "is required"
        elif err["type"] == "extra_forbidden":
            lines.append(f"unknown setting {field!r} (config file or {ENV_PREFIX}* environment)")
            continue
        lines.append(f"{flag_name(field)} ({ENV_PREFIX}{field.upper()}): {msg}")
    return "; ".join(lines)
