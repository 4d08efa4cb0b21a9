"""The vLLM engines in the cluster: one workload and one Service per served endpoint, and who may reach them.

An engine on one node is a Deployment: the pinned `vllm/vllm-openai` image
running `vllm serve` with the compose file's arguments (`serve_flags`, so the
two cannot drift), `nvidia.com/gpu` = its tensor-parallel size, `/dev/shm` in
memory, the model folder read-only from the config's PersistentVolumeClaim or
host folder at the path compose uses, the offline environment, and probes on
`/health` (a startup probe as patient as compose's start period, for a 70B
load). It is replaced, not rolled (`Recreate`): a second copy would need
GPUs the node does not have.

An engine spanning several nodes (`serve.nodes`) is a LeaderWorkerSet, as
vLLM documents it: each group is `nodes` pods, the leader starts a Ray head
and, once every worker joined, runs `vllm serve` with pipeline parallel =
nodes and tensor parallel = each pod's GPUs; the Service selects the leader.

The NetworkPolicy lets engines accept traffic only from the gateway and
Prometheus (and, within a LeaderWorkerSet, from its own pods: Ray and NCCL).
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

from moa_local.config import Config, EndpointConfig, K8sConfig, ServeConfig
from moa_local.deploy.engine_args import OFFLINE_ENV, serve_flags
from moa_local.deploy.k8s.objects import (
    APP,
    ENDPOINT_ANNOTATION,
    ENGINES_POLICY,
    GATEWAY,
    LWS_NAME_LABEL,
    MODELS_DIR,
    ROLE_LABEL,
    labels,
    metadata,
)

# Shipped in the vllm/vllm-openai image: starts a Ray head and waits for the group, or joins one.
RAY_SCRIPT = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
_LEADER = f'bash {RAY_SCRIPT} leader --ray_cluster_size="$LWS_GROUP_SIZE" && exec vllm serve "$@"'
_WORKER = f'exec bash {RAY_SCRIPT} worker --ray_address="$LWS_LEADER_ADDRESS"'


def engine_args(name: str, endpoint: EndpointConfig) -> list[str]:
    """`vllm serve`'s arguments: the compose file's command for the same endpoint."""
    assert endpoint.serve is not None
    return [model_folder(endpoint.serve), *serve_flags(name, endpoint, host="0.0.0.0", port=endpoint.port)]


def model_folder(serve: ServeConfig) -> str:
    return f"{MODELS_DIR}/{PurePosixPath(serve.model_path).name}"


def engine_objects(config: Config, name: str, service: str, namespace: str) -> list[dict[str, Any]]:
    """The workload (Deployment or LeaderWorkerSet) and the Service of one endpoint."""
    endpoint = config.endpoints[name]
    serve = endpoint.serve
    assert serve is not None
    selector = labels("engine", service)
    annotations = {ENDPOINT_ANNOTATION: name}
    if serve.nodes == 1:
        workload = _deployment(config, name, service, namespace, selector, annotations)
    else:
        workload = _leader_worker_set(config, name, service, namespace, selector, annotations)
        selector = {**selector, ROLE_LABEL: "leader"}
    service_object = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(service, namespace, labels("engine", service), annotations),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": endpoint.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return [workload, service_object]


def network_policies(config: Config, services: dict[str, str], namespace: str) -> list[dict[str, Any]]:
    k8s = config.k8s
    ports = sorted({config.endpoints[name].port for name in services})
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": k8s.prometheus_namespace}},
        "podSelector": {"matchLabels": dict(k8s.prometheus_pod_labels)},
    }
    engines: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(ENGINES_POLICY, namespace, {"app.kubernetes.io/name": APP}),
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": APP, "app.kubernetes.io/component": "engine"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": labels("gateway", GATEWAY)}}, prometheus],
                    "ports": [{"protocol": "TCP", "port": port} for port in ports],
                }
            ],
        },
    }
    groups = []
    for name, service in services.items():
        serve = config.endpoints[name].serve
        if serve is None or serve.nodes == 1:
            continue
        group = {"matchLabels": {LWS_NAME_LABEL: service}}
        groups.append(
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": metadata(f"{service}-group", namespace, labels("engine", service)),
                "spec": {
                    "podSelector": group,
                    "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"podSelector": group}]}],  # Ray and NCCL between the group's pods
                },
            }
        )
    return [engines, *groups]


def _deployment(
    config: Config, name: str, service: str, namespace: str, selector: dict[str, str], annotations: dict[str, str]
) -> dict[str, Any]:
    endpoint = config.endpoints[name]
    container = {
        **_container(config, endpoint, "vllm", ["vllm", "serve"], engine_args(name, endpoint)),
        **_probes(config.compose.engine_start_period_s),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(service, namespace, selector, annotations),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector, "annotations": annotations},
                "spec": _pod_spec(config.k8s, endpoint, container),
            },
        },
    }


def _leader_worker_set(
    config: Config, name: str, service: str, namespace: str, selector: dict[str, str], annotations: dict[str, str]
) -> dict[str, Any]:
    endpoint = config.endpoints[name]
    assert endpoint.serve is not None
    # sh -c LINE $0 $@: the arguments after LINE reach `vllm serve "$@"` unchanged.
    leader_command = ["/bin/sh", "-c", _LEADER, "vllm-leader"]
    leader = {
        **_container(config, endpoint, "vllm", leader_command, engine_args(name, endpoint)),
        **_probes(config.compose.engine_start_period_s),
    }
    worker = _container(config, endpoint, "vllm-worker", ["/bin/sh", "-c", _WORKER], None)
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": metadata(service, namespace, selector, annotations),
        "spec": {
            "replicas": 1,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": endpoint.serve.nodes,
                "restartPolicy": "RecreateGroupOnPodRestart",  # a lost pod breaks the Ray group: start it anew
                "leaderTemplate": {
                    "metadata": {"labels": {**selector, ROLE_LABEL: "leader"}, "annotations": annotations},
                    "spec": _pod_spec(config.k8s, endpoint, leader),
                },
                "workerTemplate": {
                    "metadata": {"labels": {**selector, ROLE_LABEL: "worker"}, "annotations": annotations},
                    "spec": _pod_spec(config.k8s, endpoint, worker),
                },
            },
        },
    }


def _container(
    config: Config, endpoint: EndpointConfig, container_name: str, command: list[str], args: list[str] | None
) -> dict[str, Any]:
    """An engine container; `args` None: a Ray worker, which serves no HTTP port."""
    serve = endpoint.serve
    assert serve is not None
    mount: dict[str, Any] = {"name": "models", "mountPath": model_folder(serve), "readOnly": True}
    if config.k8s.storage.claim is not None:
        mount["subPath"] = PurePosixPath(serve.model_path).name  # the claim holds every model's folder
    container: dict[str, Any] = {
        "name": container_name,
        "image": serve.image or config.compose.vllm_image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
    }
    if args is not None:
        container["args"] = args
    container["env"] = [{"name": key, "value": value} for key, value in sorted(OFFLINE_ENV.items())]
    if args is not None:
        container["ports"] = [{"name": "http", "containerPort": endpoint.port, "protocol": "TCP"}]
    container["resources"] = {"limits": {"nvidia.com/gpu": str(serve.tensor_parallel)}}
    container["volumeMounts"] = [mount, {"name": "dshm", "mountPath": "/dev/shm"}]
    return container


def _pod_spec(k8s: K8sConfig, endpoint: EndpointConfig, container: dict[str, Any]) -> dict[str, Any]:
    serve = endpoint.serve
    assert serve is not None
    folder = PurePosixPath(serve.model_path).name
    models: dict[str, Any] = {"name": "models"}
    if k8s.storage.claim is not None:
        models["persistentVolumeClaim"] = {"claimName": k8s.storage.claim, "readOnly": True}
    else:
        models["hostPath"] = {"path": str(PurePosixPath(str(k8s.storage.host_path)) / folder), "type": "Directory"}
    spec: dict[str, Any] = {
        # No Service environment variables: vLLM reads VLLM_* variables, and a Service named
        # vllm-... would add VLLM_..._PORT ones to every pod.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "tolerations": [dict(GPU_TOLERATION)],
        "containers": [container],
        "volumes": [models, {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shm_size}}],
    }
    if k8s.node_selector:
        spec["nodeSelector"] = dict(sorted(k8s.node_selector.items()))
    return spec


def _probes(start_period_s: int) -> dict[str, Any]:
    health = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        # Up to start_period_s for the weights to load before the container counts as failed.
        "startupProbe": {**health, "periodSeconds": 10, "timeoutSeconds": 5,
                         "failureThreshold": math.ceil(start_period_s / 10)},
        "readinessProbe": {**health, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 30, "timeoutSeconds": 10, "failureThreshold": 5},
    }  # fmt: skip
