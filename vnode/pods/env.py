"""Resolving a container's environment: value, valueFrom and envFrom, as the kubelet does.

ConfigMaps and Secrets are read with the node's credentials; the Node authorizer allows
exactly those referenced by pods bound to this node. A missing reference fails the
container with CreateContainerConfigError, unless it is marked optional.
"""

from __future__ import annotations

import base64
import os
import re

from vnode.kubeclient import ApiError, KubeClient
from vnode.provider.spec import ContainerIn, LaunchSpec

VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TERM")  # from vnode's own environment, for commands to work at all


def command_env(launch: LaunchSpec, pod_name: str) -> dict[str, str]:
    """What a command run for a container sees (kubectl exec, exec probes): a few of vnode's
    own variables, the container's environment, and HOSTNAME = the pod's name."""
    env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
    env.update(launch.env)
    env.setdefault("HOSTNAME", pod_name)
    return env


class EnvError(Exception):
    reason = "CreateContainerConfigError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EnvResolver:
    def __init__(self, api: KubeClient) -> None:
        self._api = api

    async def _object(self, kind: str, namespace: str, name: str) -> dict | None:
        plural = "configmaps" if kind == "ConfigMap" else "secrets"
        try:
            return await self._api.get(f"/api/v1/namespaces/{namespace}/{plural}/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise EnvError(f"cannot read {kind} {namespace}/{name}: {exc.message}") from None

    @staticmethod
    def _data(kind: str, obj: dict) -> dict[str, str]:
        if kind == "Secret":
            return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    async def resolve(self, pod: dict, container: ContainerIn, *, pod_ip: str, node_name: str) -> dict[str, str]:
        ns = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for source in container.env_from:
            ref_key = "configMapRef" if "configMapRef" in source else "secretRef"
            kind = "ConfigMap" if ref_key == "configMapRef" else "Secret"
            ref = source.get(ref_key) or {}
            obj = await self._object(kind, ns, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise EnvError(f'{kind.lower()} "{ref.get("name")}" not found')
            prefix = source.get("prefix") or ""
            env.update({prefix + k: v for k, v in self._data(kind, obj).items()})
        for var in container.env:
            if var.value_from is None:
                env[var.name] = VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), var.value or "")
                continue
            env[var.name] = await self._value_from(pod, var.name, var.value_from, pod_ip=pod_ip, node_name=node_name)
        return {k: v for k, v in env.items() if v is not None}

    async def _value_from(self, pod: dict, name: str, source: dict, *, pod_ip: str, node_name: str) -> str:
        ns = pod["metadata"]["namespace"]
        if "fieldRef" in source:
            path = source["fieldRef"].get("fieldPath", "")
            fields = {
                "metadata.name": pod["metadata"]["name"], "metadata.namespace": ns, "metadata.uid": pod["metadata"]["uid"],
                "spec.nodeName": node_name, "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
                "status.podIP": pod_ip, "status.hostIP": pod_ip, "status.podIPs": pod_ip, "status.hostIPs": pod_ip,
            }
            match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
            if match:
                return (pod["metadata"].get(match.group(1)) or {}).get(match.group(2), "")
            if path not in fields:
                raise EnvError(f"env {name}: fieldRef {path!r} is not supported")
            return fields[path]
        for ref_key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
            if ref_key in source:
                ref = source[ref_key]
                obj = await self._object(kind, ns, ref.get("name", ""))
                data = self._data(kind, obj) if obj else None
                if data is None or ref.get("key") not in data:
                    if ref.get("optional"):
                        return None  # type: ignore[return-value]
                    what = f'{kind.lower()} "{ref.get("name")}"' if data is None else f'key "{ref.get("key")}" in {kind.lower()} "{ref.get("name")}"'
                    raise EnvError(f"env {name}: {what} not found")
                return data[ref["key"]]
        if "resourceFieldRef" in source:
            raise EnvError(f"env {name}: resourceFieldRef is not supported on the Mac node")
        raise EnvError(f"env {name}: unsupported valueFrom {sorted(source)}")
