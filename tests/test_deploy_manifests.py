"""deploy/ cannot run here (no Docker engine): check that it parses and agrees with the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from kapflow.settings import KafkaSettings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SETTING_ENV = {f"KAPFLOW_{name.upper()}" for name in KafkaSettings.model_fields} | {"KAPFLOW_DB"}
TOPICS = {
    "kapflow.events",
    "kapflow.state-changes",
    "kapflow.tasks",
    "kapflow.rejected",
    "kapflow.deviations",
}


def k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def test_compose_runs_kafka_postgres_two_workers_and_the_api() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "worker", "api"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["worker"]["command"] == ["worker"]
    assert services["api"]["command"][0] == "serve"
    for name in ("worker", "api"):
        env = services[name]["environment"]
        assert set(env) <= SETTING_ENV, set(env) - SETTING_ENV
    assert (DEPLOY / services["worker"]["build"]["dockerfile"].removeprefix("deploy/")).exists()


def test_every_kubernetes_resource_is_well_formed() -> None:
    docs = k8s_documents()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    assert ("Deployment", "kapflow-worker") in kinds and ("Deployment", "kapflow-api") in kinds
    assert ("Service", "kapflow-api") in kinds and ("ConfigMap", "kapflow-config") in kinds
    assert {name for kind, name in kinds if kind == "KafkaTopic"} == TOPICS
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items()


def test_the_service_selects_the_api_pods_and_config_names_real_settings() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_documents()}
    service = docs[("Service", "kapflow-api")]
    pods = docs[("Deployment", "kapflow-api")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pods.items()
    assert set(docs[("ConfigMap", "kapflow-config")]["data"]) <= SETTING_ENV
    config = {
        k.removeprefix("KAPFLOW_").lower(): v
        for k, v in docs[("ConfigMap", "kapflow-config")]["data"].items()
    }
    config["sasl_username"], config["sasl_password"] = "u", "p"
    KafkaSettings(**config)  # the shipped configuration validates


def test_the_manifests_create_every_topic_kapflow_publishes_to() -> None:
    settings = KafkaSettings(kafka="kafka:9092")
    assert {settings.events_topic, *settings.topics.values()} == TOPICS
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    created = compose["services"]["kafka-topics"]["command"][0]
    assert all(topic in created for topic in TOPICS)
    assert compose["x-kapflow-env"]["KAPFLOW_DEVIATIONS_TOPIC"] == "kapflow.deviations"


def test_the_tls_proxy_terminates_https_in_front_of_the_api_and_logs_no_paths() -> None:
    overlay = yaml.safe_load((DEPLOY / "compose.tls.yaml").read_text())
    proxy = overlay["services"]["tls-proxy"]
    assert proxy["ports"] == ["443:443"] and proxy["depends_on"] == ["api"]
    mounted = {volume.split(":")[0].removeprefix("./") for volume in proxy["volumes"]}
    assert "tls-proxy/nginx.conf" in mounted and (DEPLOY / "tls-proxy/nginx.conf").is_file()
    conf = (DEPLOY / "tls-proxy/nginx.conf").read_text()
    lines = [line.split("#")[0].strip() for line in conf.splitlines()]
    code = "\n".join(line for line in lines if line)
    assert code.count("{") == code.count("}")
    assert "listen 443 ssl;" in code and "listen 80" not in code  # no plain HTTP at all
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in code
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in code
    assert "server api:8000;" in code and "proxy_set_header X-Forwarded-Proto https;" in code
    # Paths hold client ids and /v1/stream?access_token= an API key: never logged.
    log_format = code[code.index("log_format") : code.index(";", code.index("log_format"))]
    assert not re.search(r"\$(request|request_uri|uri|args|arg_\w+|query_string)\b", log_format)
    # The API itself is published on this host's loopback only.
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]
