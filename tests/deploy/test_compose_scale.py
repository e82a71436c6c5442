"""The replicated compose stack (deploy/compose) agrees with itself and with the service.

Static checks only: the stack runs in .ci/container-scale, with a Docker engine. Here: the
balancer health-checks /readyz on every replica it may send to, Prometheus finds the replicas on
the port the server listens on, and docker's stop timeout covers the server's drain.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tessera.service.runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
EXIT_MARGIN_S = 5  # as tests/deploy/test_k8s.py: port close, batchers stopped, Redis closed


class ComposeLoader(yaml.SafeLoader):
    """YAML with compose's merge tags (!reset, !override) read as their plain values."""


for tag in ("!reset", "!override"):
    ComposeLoader.add_constructor(tag, lambda loader, node: loader.construct_sequence(node)
                                  if isinstance(node, yaml.SequenceNode) else loader.construct_object(node))


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # a SafeLoader subclass


def image_port() -> int:
    return int(re.search(r'"--port", "(\d+)"', (ROOT / "Dockerfile").read_text()).group(1))


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"write stop_grace_period in seconds: {duration!r}"
    return float(match.group(1))


def test_haproxy_checks_readiness_of_every_replica():
    api = load(COMPOSE / "docker-compose.scale.yml")["services"]["api"]
    replicas = api["deploy"]["replicas"]
    assert replicas >= 3 and api["ports"] == [], "replicas publish no port: HAProxy does"
    config = (COMPOSE / "haproxy.cfg").read_text()
    [(slots, host, port)] = re.findall(r"^\s*server-template \w+ (\d+) (\w+):(\d+) check", config, re.M)
    assert int(slots) >= replicas and host == "api" and int(port) == image_port()
    assert re.search(r"^\s*http-check send meth GET uri /readyz$", config, re.M)
    assert re.search(r"^\s*http-check expect status 200$", config, re.M)
    assert re.search(r"^\s*retry-on .*\b503\b", config, re.M), "503 shutting_down must be retried on another replica"
    assert re.search(r"^\s*option http-buffer-request\b", config, re.M), "HAProxy replays only buffered requests"


def test_prometheus_discovers_every_replica():
    compose = load(COMPOSE / "docker-compose.scale.yml")["services"]["prometheus"]
    mounted = {volume.split(":")[1]: volume.split(":")[0] for volume in compose["volumes"] if ":" in volume}
    assert mounted["/etc/prometheus/prometheus.yml"] == "./deploy/compose/prometheus.scale.yml"
    [job] = [job for job in load(COMPOSE / "prometheus.scale.yml")["scrape_configs"] if job["job_name"] == "tessera"]
    [discovery] = job["dns_sd_configs"]
    assert discovery["names"] == ["api"] and discovery["type"] == "A" and discovery["port"] == image_port()


def test_docker_stop_waits_for_the_drain():
    base = load(ROOT / "docker-compose.yml")["services"]["api"]
    scale = load(COMPOSE / "docker-compose.scale.yml")["services"]["api"]
    environment = {**base.get("environment", {}), **scale["environment"]}
    settings = Settings(**{name.removeprefix("TESSERA_").lower(): value for name, value in environment.items()
                           if not str(value).startswith("${")})
    assert settings.shutdown_grace_s >= settings.request_timeout_s
    longest_drain_s = max(settings.shutdown_grace_s, settings.shutdown_delay_s)
    assert seconds(scale["stop_grace_period"]) >= longest_drain_s + EXIT_MARGIN_S
