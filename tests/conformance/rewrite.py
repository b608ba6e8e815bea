"""The suites' pods, rewritten on admission into Gemma llama-server pods (issue 12).

A pod on the Mac can only be a llama.cpp server, and no container image can be pulled here,
so a MutatingAdmissionPolicy (admissionregistration.k8s.io/v1beta1; kube-apiserver needs
--feature-gates=MutatingAdmissionPolicy=true and --runtime-config=admissionregistration.k8s.io/v1beta1=true)
rewrites each container of a pod created in a test namespace — one labelled `e2e-run`: the
Kubernetes e2e framework labels every namespace it creates with its run id, and the harness
labels the virtual-kubelet suite's namespace so — and nowhere else:

- image  -> ghcr.io/ggml-org/llama.cpp:server; command removed
- args   -> -hf ggml-org/gemma-3-270m-GGUF:Q4_K_M --port P -c 1024
- ports  -> [{containerPort: P}] (hostPort dropped: PodSecurity "restricted" forbids it)
- readiness/liveness/startup probes removed (they probe the original image's ports)

P is unique per container: 20000 + 4 * (a hash of namespace/name, or generateName when the
name is not yet set at admission, mod 3000) + the container's index (up to 4 containers),
so pods of a spec, and of specs one after another, never ask for the same port. Everything
else (names, labels, env, volumes, security context, readiness gates, grace periods,
activeDeadlineSeconds) is left as the suite wrote it.
"""

from __future__ import annotations

IMAGE = "ghcr.io/ggml-org/llama.cpp:server"
MODEL = "ggml-org/gemma-3-270m-GGUF:Q4_K_M"
NAMESPACE_LABEL = "e2e-run"  # the e2e framework labels each namespace it creates with its run id
POLICY = "vnode-conformance-gemma"
APISERVER_FLAGS = (
    "--feature-gates=MutatingAdmissionPolicy=true",
    "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
)

_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789-./"
# A position-weighted sum of the key's characters (CEL has no hash function): distinct for
# the e2e framework's uuid-suffixed names, and for the virtual-kubelet suite's generateNames.
_KEY = ("request.namespace + '/' + (object.metadata.?name.orValue('') != '' ? object.metadata.name "
        ": object.metadata.?generateName.orValue(''))")
_BASE = (f"20000 + 4 * (lists.range(size(variables.key)).map(i, ('{_ALPHABET}'.indexOf(variables.key.charAt(i)) + 2) "
         "* (i * i * 131 + i * 17 + 1)).sum() % 3000)")
_PROBES = ("readinessProbe", "livenessProbe", "startupProbe")


def _container_patches() -> str:
    removals = " + ".join(
        f"(has(object.spec.containers[i].{probe}) ? [JSONPatch{{op: 'remove', path: '/spec/containers/' + string(i) + '/{probe}'}}] : [])"
        for probe in (*_PROBES, "command")
    )
    return (
        "lists.range(size(object.spec.containers)).map(i, ["
        f"JSONPatch{{op: 'add', path: '/spec/containers/' + string(i) + '/image', value: '{IMAGE}'}}, "
        "JSONPatch{op: 'add', path: '/spec/containers/' + string(i) + '/args', "
        f"value: ['-hf', '{MODEL}', '--port', string(variables.base + i), '-c', '1024']}}, "
        "JSONPatch{op: 'add', path: '/spec/containers/' + string(i) + '/ports', "
        "value: [{'containerPort': dyn(variables.base + i), 'protocol': dyn('TCP')}]}"
        f"] + {removals}).flatten()"
    )


def policy_objects() -> list[dict]:
    """The MutatingAdmissionPolicy and its binding."""
    match = {
        "namespaceSelector": {"matchExpressions": [{"key": NAMESPACE_LABEL, "operator": "Exists"}]},
        "resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
    }
    return [
        {
            "apiVersion": "admissionregistration.k8s.io/v1beta1",
            "kind": "MutatingAdmissionPolicy",
            "metadata": {"name": POLICY},
            "spec": {
                "matchConstraints": match,
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "matchConditions": [{
                    "name": "at-most-4-containers",
                    "expression": "size(object.spec.containers) <= 4",
                }],
                "variables": [{"name": "key", "expression": _KEY}, {"name": "base", "expression": _BASE}],
                "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": _container_patches()}}],
            },
        },
        {
            "apiVersion": "admissionregistration.k8s.io/v1beta1",
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": POLICY},
            "spec": {"policyName": POLICY, "matchResources": match},
        },
    ]


def describe() -> str:
    """The one paragraph every report carries."""
    return (f"Pods were rewritten on admission by the MutatingAdmissionPolicy {POLICY} (tests/conformance/rewrite.py), "
            f"in the suites' namespaces only: each container's image became {IMAGE}, its command was removed, its args "
            f"became `-hf {MODEL} --port P -c 1024` with P unique per container, its ports [{{containerPort: P}}], and "
            "its probes were removed; everything else is as the suite wrote it.")
