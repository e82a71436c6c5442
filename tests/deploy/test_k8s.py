"""The Kubernetes manifests (``deploy/k8s``) render, validate, and agree with the service.

Every overlay is rendered with ``kubectl kustomize`` (offline) and each object validated against
the Kubernetes schemas that ``kubernetes-validate`` ships (strict: unknown fields are errors), for
the oldest Kubernetes these manifests claim and the newest the package knows. The two custom
resources (KEDA's ScaledObject, the Prometheus Operator's ServiceMonitor) have no schema there;
they are checked against minimal schemas of their own below, covering every field they use.

Beyond the schemas the tests hold the manifests to the service: probe paths and their behaviour
in a real app, the shutdown arithmetic against the server's own settings, the image's user and
port from the Dockerfile, and the autoscaling metric against the series a served app exports,
with the prometheus-adapter and KEDA queries evaluated by ``promtool`` on such series.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tessera.service.runtime.settings import Settings
from tessera.testing.apps import serving

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(path.parent.name for path in (K8S / "overlays").glob("*/kustomization.yaml"))
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
SCALING_DOC = ROOT / "docs" / "scaling.md"
NAMESPACE = "tessera"
API = "tessera-api"  # the Deployment (its pods are tessera-api-<hash>-<id>)
CLUSTER_SCOPED = {"Namespace"}
# the oldest Kubernetes these manifests are for, and the newest kubernetes-validate knows
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
# from the end of the drain to the exit: uvicorn closes the port, the lifespan stops the
# batchers and closes Redis (docs/reliability.md measured the whole drain of 16 requests at 1.84 s)
EXIT_MARGIN_S = 5
# the least preStop sleep that gives kube-proxy, ingress controllers and cloud balancers time to
# drop an endpoint that is going away
ENDPOINT_PROPAGATION_S = 5


# -- minimal schemas of the custom resources ---------------------------------------------------

STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "minLength": 1}}}

SCALED_OBJECT = {  # KEDA 2.x keda.sh/v1alpha1 ScaledObject, the fields of its spec
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"name": {"type": "string"}, "kind": {"type": "string"}, "apiVersion": {"type": "string"},
                                   "envSourceContainerName": {"type": "string"}},
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "scalingModifiers": {"type": "object"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": {"type": "object"}},
                        },
                    },
                },
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            "metadata": STRINGS,  # map[string]string: threshold: 128 (a number) is refused by KEDA
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                    },
                },
            },
        },
    },
}

SERVICE_MONITOR = {  # Prometheus Operator monitoring.coreos.com/v1 ServiceMonitor, the fields used
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "namespaceSelector": {"type": "object"},
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": STRINGS, "matchExpressions": {"type": "array"}}},
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}

CRD_SCHEMAS = {"ScaledObject": SCALED_OBJECT, "ServiceMonitor": SERVICE_MONITOR}


# -- rendering and looking things up -----------------------------------------------------------


def render(kubectl: str, path: Path) -> list[dict]:
    result = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl_binary) -> dict[str, list[dict]]:
    return {overlay: render(kubectl_binary, K8S / "overlays" / overlay) for overlay in OVERLAYS}


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    found = [doc for doc in objects(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def api_pod(docs: list[dict]) -> dict:
    return named(docs, "Deployment", API)["spec"]["template"]["spec"]


def api_container(docs: list[dict]) -> dict:
    containers = api_pod(docs)["containers"]
    assert [c["name"] for c in containers] == ["api"]
    return containers[0]


def api_environment(docs: list[dict]) -> dict[str, str]:
    """The api container's environment: its ConfigMaps (envFrom), then its own env values."""
    container = api_container(docs)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(named(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: only literal values are expected"
        env[item["name"]] = item["value"]
    return env


def api_settings(docs: list[dict]) -> Settings:
    """The service's settings as the api pods get them (unknown or invalid TESSERA_* variables fail here)."""
    env = api_environment(docs)
    unprefixed = [name for name in env if not name.startswith("TESSERA_")]
    assert not unprefixed, f"variables the server does not read: {unprefixed}"
    return Settings(**{name.removeprefix("TESSERA_").lower(): value for name, value in env.items()})


def autoscalers(docs: list[dict]) -> list[dict]:
    return objects(docs, "HorizontalPodAutoscaler") + objects(docs, "ScaledObject")


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def image_user() -> int:
    return int(re.search(r"^USER (\d+)", dockerfile(), re.M).group(1))


def image_port() -> int:
    command = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile(), re.M).group(1))
    return int(command[command.index("--port") + 1])


def compose_image(file: str) -> str:
    return re.search(r"image: \$\{TESSERA_IMAGE:-([^}]+)\}", (ROOT / file).read_text()).group(1)


def adapter_rule() -> dict:
    rules = [rule for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
             if rule["name"].get("as") == "tessera_queued_tiles"]
    assert len(rules) == 1, "one prometheus-adapter rule must expose tessera_queued_tiles"
    return rules[0]


def selector_metric(query: str) -> str:
    """The metric name a series selector such as 'name{a="b"}' selects."""
    return re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", query).group(1)


# -- an app serving a tiny model: what the service really exports --------------------------------


@pytest.fixture(scope="module")
def service(checkpoint_dir):
    with serving(checkpoint_dir, max_batch_tiles=1) as client:  # one warm-up size: ready in about a second
        yield client


@pytest.fixture(scope="module")
def exported(service) -> dict[str, list]:
    """Metric family name -> its samples, from the app's /metrics."""
    response = service.get("/metrics")
    assert response.status_code == 200
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


# -- rendering and schemas ---------------------------------------------------------------------


def test_the_overlays_are_there():
    assert {"cpu", "gpu", "keda"} <= set(OVERLAYS), OVERLAYS


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(rendered, overlay, version):
    docs = rendered[overlay]
    assert docs, f"{overlay} renders nothing"
    for doc in docs:
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        if doc["kind"] in CRD_SCHEMAS:  # a custom resource: no schema in kubernetes-validate
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {version} at {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_one_namespace(rendered, overlay):
    for doc in rendered[overlay]:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
    assert named(rendered[overlay], "Namespace", NAMESPACE)


def test_the_custom_resource_schemas_catch_mistakes(rendered):
    scaled = objects(rendered["keda"], "ScaledObject")[0]
    jsonschema.validate(scaled, SCALED_OBJECT)
    broken = []
    for change in (lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=128),  # a number, not a string
                   lambda s: s["spec"].update(minReplicas=2),  # the HPA's spelling
                   lambda s: s["spec"]["triggers"].clear()):
        bad = copy.deepcopy(scaled)
        change(bad)
        broken.append(bad)
    for bad in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCALED_OBJECT)


def test_the_servicemonitor_component_scrapes_the_api_service(kubectl_binary, tmp_path):
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": NAMESPACE,
        "resources": [os.path.relpath(K8S / "base", tmp_path)],  # kustomize takes no absolute paths
        "components": [os.path.relpath(K8S / "components" / "servicemonitor", tmp_path)],
    }))
    docs = render(kubectl_binary, tmp_path)
    monitor = named(docs, "ServiceMonitor", API)
    jsonschema.validate(monitor, SERVICE_MONITOR)
    assert monitor["metadata"]["namespace"] == NAMESPACE
    service = named(docs, "Service", API)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


# -- the api pods ------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(rendered, overlay):
    container = api_container(rendered[overlay])
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": image_port()}, "the container port must be the one `tessera serve` listens on (Dockerfile CMD)"
    startup, readiness, liveness = (container[probe] for probe in ("startupProbe", "readinessProbe", "livenessProbe"))
    for probe in (startup, readiness, liveness):
        assert probe["httpGet"]["port"] in ("http", image_port())
    # readiness: warm and not draining; liveness: the process answers (never /readyz, which is 503
    # while a pod drains: a restart then would kill the requests it is finishing)
    assert readiness["httpGet"]["path"] == "/readyz"
    assert liveness["httpGet"]["path"] == "/healthz"
    # liveness starts once the startup probe passed, i.e. once the models are warm
    assert startup["httpGet"]["path"] == "/readyz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "too little time for loading and warm-up"


def test_the_probed_endpoints_behave_as_the_probes_assume(checkpoint_dir):
    with serving(checkpoint_dir, max_batch_tiles=1) as service:  # its own app: it drains
        assert service.get("/healthz").status_code == 200
        assert service.get("/readyz").status_code == 200
        assert service.app.state.tessera.lifecycle.drain()  # what SIGTERM does (service.runtime.shutdown)
        assert service.get("/readyz").status_code == 503
        assert service.get("/healthz").status_code == 200


def answered_within_s(settings: Settings) -> float:
    """The longest an admitted request takes to be answered (200, or 504 at its deadline): its
    deadline counts from admission; where the server also bounds the body upload
    (``body_timeout_s``), a body slower than the deadline is cut at that bound instead."""
    return max(settings.request_timeout_s, getattr(settings, "body_timeout_s", 0.0))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_shutdown_loses_no_accepted_request(rendered, overlay):
    """The pod's termination budget covers everything an accepted request may still need.

    Kubernetes runs the preStop hook, then sends SIGTERM, and kills the container
    terminationGracePeriodSeconds after the hook started. During the preStop sleep the pod has
    left the Service's endpoints but still serves normally (stragglers of stale proxies are
    answered). After SIGTERM the server admits nothing new (503 shutting_down, retryable) and waits
    until every admitted request is answered, at least TESSERA_SHUTDOWN_DELAY_S and at most
    TESSERA_SHUTDOWN_GRACE_S. An admitted request is answered (or 504) within
    TESSERA_REQUEST_TIMEOUT_S of its admission (``answered_within_s``), so a grace of at least
    that long never gives up on one; the last one admitted before SIGTERM is answered by preStop
    + that time, before the kill.
    """
    pod = api_pod(rendered[overlay])
    container = api_container(rendered[overlay])
    settings = api_settings(rendered[overlay])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    pre_stop_s = float(command[1])
    termination_s = pod["terminationGracePeriodSeconds"]

    assert pre_stop_s >= ENDPOINT_PROPAGATION_S
    assert settings.shutdown_grace_s >= answered_within_s(settings), "the drain would give up on requests still in time"
    assert settings.shutdown_delay_s <= settings.shutdown_grace_s
    needed_s = pre_stop_s + max(settings.shutdown_grace_s, settings.shutdown_delay_s) + EXIT_MARGIN_S
    assert termination_s >= needed_s, (
        f"terminationGracePeriodSeconds {termination_s} < preStop {pre_stop_s} + shutdown grace "
        f"{settings.shutdown_grace_s} + margin {EXIT_MARGIN_S}: the kill would cut the drain short"
    )
    # and the pod is not restarted by its liveness probe while it drains: /healthz answers until
    # the port closes (test_probes, test_the_probed_endpoints_behave_as_the_probes_assume)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rolling_updates_keep_serving(rendered, overlay):
    deployment = named(rendered[overlay], "Deployment", API)
    update = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    # either a new pod is ready before an old one goes, or (no spare GPU) one old pod at a time goes
    assert (update["maxUnavailable"], update["maxSurge"]) in {(0, 1), (1, 0)}
    pdb = named(rendered[overlay], "PodDisruptionBudget", API)
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    [scaler] = autoscalers(rendered[overlay])
    least = scaler["spec"].get("minReplicas", scaler["spec"].get("minReplicaCount"))
    assert least - pdb["spec"]["maxUnavailable"] >= 1, "a node drain could take every api pod"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged(rendered, overlay):
    for deployment in objects(rendered[overlay], "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        where = f"{overlay}: {deployment['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in context["capabilities"], where
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), where
            assert "memory" in resources["limits"], where
    pod = api_pod(rendered[overlay])
    assert pod["securityContext"]["runAsUser"] == image_user(), "the image's user (Dockerfile USER)"
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    tmp = [m for m in api_container(rendered[overlay])["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], "the read-only root needs a writable /tmp"
    # Kubernetes' service links would add TESSERA_<SERVICE>_PORT=tcp://... variables, which the
    # server reads as settings: a Service named "tessera" makes TESSERA_PORT unparsable
    assert pod["enableServiceLinks"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_and_keys(rendered, overlay):
    docs = rendered[overlay]
    settings = api_settings(docs)  # every variable is a real setting with a valid value
    assert settings.metrics_public, "Prometheus scrapes /metrics without a key"
    # the keys: a file from the Secret, never shipped with the manifests
    assert not objects(docs, "Secret"), "API keys must not be part of the manifests"
    assert settings.api_keys.startswith("@")
    key_file = Path(settings.api_keys[1:])
    container = api_container(docs)
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    assert mount["readOnly"] is True
    [volume] = [v for v in api_pod(docs)["volumes"] if v["name"] == mount["name"]]
    [item] = volume["secret"]["items"]
    assert item["path"] == key_file.name
    secret, key = volume["secret"]["secretName"], item["key"]
    assert f"create secret generic {secret} --from-file={key}=" in SCALING_DOC.read_text(), (
        f"docs/scaling.md must show how to create the Secret {secret} with the key {key}")
    # the shared cache: a Service of the render on the URL's host and port
    match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", settings.redis_url or "")
    assert match, settings.redis_url
    redis = named(docs, "Service", match.group(1))
    assert int(match.group(2)) in {port["port"] for port in redis["spec"]["ports"]}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_is_scraped(rendered, overlay, exported):
    annotations = named(rendered[overlay], "Deployment", API)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(image_port())
    assert annotations["prometheus.io/path"] == "/metrics"
    assert "tessera_requests" in exported  # /metrics of a real app


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_sends_to_ready_api_pods(rendered, overlay):
    service = named(rendered[overlay], "Service", API)
    deployment = named(rendered[overlay], "Deployment", API)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert not service["spec"].get("publishNotReadyAddresses", False)
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= {"http", image_port()}


def test_gpu_overlay(rendered):
    docs = rendered["gpu"]
    resources = api_container(docs)["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == 1 and resources["limits"]["nvidia.com/gpu"] == 1
    settings = api_settings(docs)
    assert settings.device == "cuda" and settings.cuda_dtype == "bf16"
    # the CUDA image: what docker-compose.gpu.yml builds (the Dockerfile with TORCH_VARIANT=cu...)
    assert api_container(docs)["image"] == compose_image("docker-compose.gpu.yml")
    assert re.search(r"TORCH_VARIANT: \$\{TORCH_VARIANT:-cu\d+\}", (ROOT / "docker-compose.gpu.yml").read_text())
    assert re.search(r"^ARG TORCH_VARIANT=", dockerfile(), re.M)
    for overlay in ("cpu", "keda"):
        assert api_container(rendered[overlay])["image"] == compose_image("docker-compose.yml")
        assert "nvidia.com/gpu" not in api_container(rendered[overlay])["resources"]["limits"]
        assert api_settings(rendered[overlay]).device == "cpu"


# -- autoscaling -------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_autoscaler_owns_the_replica_count(rendered, overlay):
    docs = rendered[overlay]
    scalers = autoscalers(docs)
    assert len(scalers) == 1, f"{overlay}: {[s['kind'] for s in scalers]} (an HPA and KEDA's would fight)"
    target = scalers[0]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", API)
    assert "replicas" not in named(docs, "Deployment", API)["spec"], "a fixed count would reset the autoscaler's"
    settings = api_settings(docs)
    threshold = scaler_target(scalers[0])
    # above a batch (a queue that short is normal work) and below the queue bound (scale out before 503s)
    assert settings.max_batch_tiles <= threshold < settings.max_queue_tiles


def scaler_target(scaler: dict) -> float:
    if scaler["kind"] == "ScaledObject":
        return float(scaler["spec"]["triggers"][0]["metadata"]["threshold"])
    [metric] = scaler["spec"]["metrics"]
    return float(metric["pods"]["target"]["averageValue"])


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_hpa_metric_is_the_adapter_rule(rendered, overlay, exported):
    [hpa] = objects(rendered[overlay], "HorizontalPodAutoscaler")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rule = adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = selector_metric(rule["seriesQuery"])
    assert re.fullmatch(rule["name"]["matches"], series)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    # the series exists in what a served app exports: a gauge per model and operation
    samples = exported[series]
    assert samples and all(s.name == series and set(s.labels) == {"model", "op"} for s in samples)
    assert {s.labels["op"] for s in samples} == {"encode", "decode"}


def test_keda_scales_as_the_hpa(rendered):
    [scaled] = objects(rendered["keda"], "ScaledObject")
    [hpa] = objects(rendered["cpu"], "HorizontalPodAutoscaler")
    spec = scaled["spec"]
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    [trigger] = spec["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert scaler_target(scaled) == scaler_target(hpa)
    assert re.fullmatch(r"https?://[^\s/]+(:\d+)?/?", trigger["metadata"]["serverAddress"])
    # the query selects this namespace's api pods, not Redis' or another namespace's
    selector = re.search(r"\{(.*?)\}", trigger["metadata"]["query"]).group(1)
    matchers = dict(re.findall(r'(\w+)=~?"([^"]*)"', selector))
    assert matchers["namespace"] == NAMESPACE
    assert re.fullmatch(matchers["pod"], f"{API}-5d8f7c9b6-x2k4q")
    assert not re.fullmatch(matchers["pod"], "tessera-redis-6b7d9c8f4-q9z7w")


def adapter_query(namespace: str, pods: list[str]) -> str:
    """The rule's metricsQuery as prometheus-adapter fills it in for the pods of one HPA."""
    rule = adapter_rule()
    template = rule["metricsQuery"]
    fields = set(re.findall(r"<<\s*\.(\w+)\s*>>", template))
    assert fields <= {"Series", "LabelMatchers", "GroupBy"}, fields
    values = {"Series": selector_metric(rule["seriesQuery"]),
              "LabelMatchers": f'namespace="{namespace}",pod=~"{"|".join(pods)}"', "GroupBy": "pod"}
    return re.sub(r"<<\s*\.(\w+)\s*>>", lambda m: values[m.group(1)], template)


def test_the_queries_measure_queued_tiles_per_pod(rendered, exported, promtool_binary, tmp_path):
    """prometheus-adapter's and KEDA's queries, evaluated by promtool on the series that the app
    exports, labelled as Prometheus' pod discovery labels them: tiles queued per pod (every
    model and operation), and their sum over the api pods of the namespace."""
    series = selector_metric(adapter_rule()["seriesQuery"])
    samples = exported[series]
    queued = {"tessera-api-5d8f7c9b6-aaaaa": [96, 32], "tessera-api-5d8f7c9b6-bbbbb": [8, 0]}  # per sample of the app
    inputs = []
    for namespace, pods in ((NAMESPACE, queued), ("staging", {pod: [1000, 1000] for pod in queued})):
        for pod, values in pods.items():
            for sample, value in zip(samples, values, strict=True):
                labels = {**sample.labels, "namespace": namespace, "pod": pod, "job": "kubernetes-pods",
                          "instance": f"{pod}:{image_port()}"}
                selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
                inputs.append({"series": f"{series}{{{selector}}}", "values": f"{value}x8"})  # two minutes at 15 s
    [scaled] = objects(rendered["keda"], "ScaledObject")
    tests = {"tests": [{
        "interval": "15s",
        "input_series": inputs,
        "promql_expr_test": [
            {"expr": adapter_query(NAMESPACE, sorted(queued)), "eval_time": "2m",
             "exp_samples": [{"labels": f'{{pod="{pod}"}}', "value": sum(values)} for pod, values in queued.items()]},
            {"expr": scaled["spec"]["triggers"][0]["metadata"]["query"], "eval_time": "2m",
             "exp_samples": [{"labels": "{}", "value": sum(map(sum, queued.values()))}]},
        ],
    }]}
    path = tmp_path / "queries.test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = subprocess.run([promtool_binary, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
