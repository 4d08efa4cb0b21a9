"""Kubernetes manifests from a config: the same `serve` blocks that drive Compose, for a GPU cluster.

`k8s_manifests(config, ...)` renders a kustomize-ready folder of plain
manifests as file name -> text; `write_folder` writes it. The modules:
`objects` (names, labels, YAML), `engines` (vLLM Deployments or
LeaderWorkerSets, their Services, the NetworkPolicy), `gateway` (its config
as a ConfigMap, Deployment, Service, PDB, autoscaler), `monitoring`
(ServiceMonitors, PodMonitors, PrometheusRule, dashboards), `manifests` (the
folder's files and kustomization), `folder` (writing them).

Left out on purpose: the cluster's own parts (the GPU operator or device
plugin, the LeaderWorkerSet controller, the Prometheus Operator, Grafana),
the PersistentVolumeClaim holding the weights (its storage class and size are
the cluster's), the Secret (its values are the operator's) and an Ingress.
"""

from moa_local.deploy.k8s.folder import write_folder
from moa_local.deploy.k8s.manifests import KUSTOMIZATION, k8s_manifests

__all__ = ["KUSTOMIZATION", "k8s_manifests", "write_folder"]
