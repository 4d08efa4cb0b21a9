"""Structural schemas of the four custom resources `moa-local k8s` writes, written down by hand.

No package available here ships these CRDs' published OpenAPI schemas (PyPI's
cloudcoil-models-prometheus-operator ships pydantic models that accept unknown
fields; npm's @kubernetes-models ships compiled validators generated from Go
types; nothing ships LeaderWorkerSet's), so these JSON Schemas were written
from the CRDs themselves:

- LeaderWorkerSet `leaderworkerset.x-k8s.io/v1`: kubernetes-sigs/lws v0.10.0,
  config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml;
- ServiceMonitor, PodMonitor, PrometheusRule `monitoring.coreos.com/v1`:
  prometheus-operator v0.93.0, example/prometheus-operator-crd/.

Each level we write lists every property the CRD allows there (so a
misspelt field fails, as the API server's strict field validation would),
with the CRD's required fields, types and enums for the fields we use; the
levels we never write stay open. LeaderWorkerSet's pod templates are checked
against the real core PodTemplateSpec schema by the tests (kubernetes-validate).
"""

from __future__ import annotations

from typing import Any

DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
RELABEL_ACTIONS = [
    *("replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap"),
    *("labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase"),
    *("keepequal", "KeepEqual", "dropequal", "DropEqual"),
]


def _closed(properties: dict[str, Any], names: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """An object allowing exactly the CRD's property `names` (space-separated); `properties` type the ones we use."""
    allowed = names.split()
    assert set(properties) <= set(allowed), set(properties) - set(allowed)
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: properties.get(name, {}) for name in allowed},
        "additionalProperties": False,
    }
    if required:
        schema["required"] = list(required)
    return schema


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRING_MAP,
                   "annotations": STRING_MAP},
}  # fmt: skip
LABEL_SELECTOR = _closed({"matchLabels": STRING_MAP}, "matchExpressions matchLabels")
RELABEL = _closed(
    {
        "action": {"enum": RELABEL_ACTIONS},
        "replacement": {"type": "string"},
        "targetLabel": {"type": "string"},
        "sourceLabels": {"type": "array", "items": {"type": "string"}},
        "regex": {"type": "string"},
    },
    "action modulus regex replacement separator sourceLabels targetLabel",
)
SECRET_KEY = _closed({"key": {"type": "string"}, "name": {"type": "string"}, "optional": {"type": "boolean"}},
                     "key name optional", ("key",))  # fmt: skip
AUTHORIZATION = _closed({"type": {"type": "string"}, "credentials": SECRET_KEY}, "credentials type")
_SCRAPE_COMMON = {
    "port": {"type": "string"},
    "path": {"type": "string"},
    "interval": {"type": "string", "pattern": DURATION},
    "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
    "relabelings": {"type": "array", "items": RELABEL},
    "authorization": AUTHORIZATION,
}
SERVICE_MONITOR_ENDPOINT = _closed(
    _SCRAPE_COMMON,
    "authorization basicAuth bearerTokenFile bearerTokenSecret enableHttp2 filterRunning followRedirects honorLabels "
    "honorTimestamps interval metricRelabelings noProxy oauth2 params path port proxyConnectHeader "
    "proxyFromEnvironment proxyUrl relabelings scheme scrapeTimeout targetPort tlsConfig trackTimestampsStaleness",
)
POD_METRICS_ENDPOINT = _closed(
    _SCRAPE_COMMON,
    "authorization basicAuth bearerTokenSecret enableHttp2 filterRunning followRedirects honorLabels honorTimestamps "
    "interval metricRelabelings noProxy oauth2 params path port portNumber proxyConnectHeader proxyFromEnvironment "
    "proxyUrl relabelings scheme scrapeTimeout targetPort tlsConfig trackTimestampsStaleness",
)
_MONITOR_COMMON = (
    "attachMetadata bodySizeLimit convertClassicHistogramsToNHCB fallbackScrapeProtocol jobLabel keepDroppedTargets "
    "labelLimit labelNameLengthLimit labelValueLengthLimit namespaceSelector nativeHistogramBucketLimit "
    "nativeHistogramMinBucketFactor podTargetLabels sampleLimit scrapeClass scrapeClassicHistograms "
    "scrapeNativeHistograms scrapeProtocols selector selectorMechanism targetLimit"
)


def _resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return _closed(
        {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": METADATA, "spec": spec},
        "apiVersion kind metadata spec status",
        ("apiVersion", "kind", "metadata", "spec"),
    )


SERVICE_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "ServiceMonitor",
    _closed(
        {"selector": LABEL_SELECTOR, "endpoints": {"type": "array", "items": SERVICE_MONITOR_ENDPOINT}},
        f"{_MONITOR_COMMON} endpoints serviceDiscoveryRole targetLabels",
        ("endpoints", "selector"),
    ),
)
POD_MONITOR = _resource(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    _closed(
        {"selector": LABEL_SELECTOR, "podMetricsEndpoints": {"type": "array", "items": POD_METRICS_ENDPOINT}},
        f"{_MONITOR_COMMON} podMetricsEndpoints",
        ("selector",),
    ),
)
RULE = _closed(
    {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": ["string", "integer"]},  # int-or-string
        "for": {"type": "string", "pattern": DURATION},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
    },
    "alert annotations expr for keep_firing_for labels record",
    ("expr",),
)
PROMETHEUS_RULE = _resource(
    "monitoring.coreos.com/v1",
    "PrometheusRule",
    _closed(
        {
            "groups": {
                "type": "array",
                "items": _closed(
                    {"name": {"type": "string", "minLength": 1}, "interval": {"type": "string", "pattern": DURATION},
                     "rules": {"type": "array", "items": RULE}},
                    "interval labels limit name partial_response_strategy query_offset rules",
                    ("name",),
                ),
            }
        },
        "groups",
    ),
)
POD_TEMPLATE = _closed({"metadata": {"type": "object"}, "spec": {"type": "object"}}, "metadata spec")
LEADER_WORKER_SET = _resource(
    "leaderworkerset.x-k8s.io/v1",
    "LeaderWorkerSet",
    _closed(
        {
            "replicas": {"type": "integer", "minimum": 0},
            "startupPolicy": {"enum": ["LeaderCreated", "LeaderReady"]},
            "leaderWorkerTemplate": _closed(
                {
                    "size": {"type": "integer", "minimum": 1},
                    "restartPolicy": {"enum": ["Default", "RecreateGroupOnPodRestart", "RecreateGroupAfterStart",
                                               "None"]},
                    "leaderTemplate": POD_TEMPLATE,
                    "workerTemplate": POD_TEMPLATE,
                },
                "leaderTemplate persistentVolumeClaimRetentionPolicy restartPolicy size subGroupPolicy "
                "volumeClaimTemplates workerTemplate",
                ("workerTemplate",),
            ),
        },
        "leaderWorkerTemplate networkConfig replicas rolloutStrategy startupPolicy",
        ("leaderWorkerTemplate",),
    ),
)
SCHEMAS: dict[str, dict[str, Any]] = {
    "LeaderWorkerSet": LEADER_WORKER_SET,
    "ServiceMonitor": SERVICE_MONITOR,
    "PodMonitor": POD_MONITOR,
    "PrometheusRule": PROMETHEUS_RULE,
}
