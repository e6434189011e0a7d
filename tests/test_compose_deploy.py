"""The deployment files around docker-compose.yml agree with each other and with the relay.

The image's base, Redis' memory limit, gunicorn's process count, the secrets override, and the
`monitoring` profile (Prometheus scraping the api, Grafana provisioned from deploy/) are wired by
names spread over several files; these tests read the files and check that the names meet.
``make compose-test`` runs the compose file itself on Docker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.test_compose import SERVICES, dockerfile_stages

DEPLOY = ROOT / "deploy"
SECRETS = ("promoter_api_key", "admin_token", "segment_write_keys", "segment_shared_secret", "metrics_token")
RELAY = ("api", "worker", "beat", "flower")
PROMTOOL = shutil.which("promtool")


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def default_of(value: str, variable: str) -> str:
    """The default of ``${VARIABLE:-default}`` in a compose value."""
    match = re.fullmatch(rf".*\$\{{{variable}:-([^}}]+)\}}.*", value)
    assert match, f"{value!r} does not read ${{{variable}:-...}}"
    return match[1]


def test_base_images_are_arguments_with_todays_defaults() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim\n" in dockerfile.split("\nFROM ", 1)[0]
    assert dockerfile_stages()["dependencies"].startswith("FROM ${BASE_IMAGE} AS dependencies")
    for name in RELAY:
        assert (
            default_of(SERVICES[name]["build"]["args"]["BASE_IMAGE"], "RELAY_BASE_IMAGE")
            == "python:3.11-slim"
        )
    assert default_of(SERVICES["redis"]["image"], "REDIS_IMAGE") == "redis:7.2-alpine"


@pytest.mark.integration
def test_dependencies_are_installed_in_a_layer_before_the_code(tmp_path: Path) -> None:
    """A code change rebuilds only the code layers: the dependency layer sees pyproject.toml alone."""
    stages = dockerfile_stages()
    dependencies = stages["dependencies"]
    assert re.findall(r"^COPY (.*)$", dependencies, re.M) == ["pyproject.toml ./"]
    for name in ("relay", "flower"):
        steps = stages[name]
        assert steps.index("COPY app") < steps.index("pip install --no-deps --no-build-isolation .")
        assert "pip install -r" not in steps
    # The requirements the dependency layer installs are the project's, as pyproject.toml says.
    script = re.search(r'python -c "(.*?)" > /tmp/requirements.txt', dependencies.replace("\\\n", ""), re.S)
    assert script
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    printed = subprocess.run(
        ["python3", "-c", script[1]], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert [line for line in printed if line] == [
        *project["build-system"]["requires"],
        *project["project"]["dependencies"],
    ]


def test_redis_memory_limit_and_gunicorn_processes_are_explicit() -> None:
    command = SERVICES["redis"]["command"]
    limit = default_of(command[command.index("--maxmemory") + 1], "REDIS_MAXMEMORY")
    assert re.fullmatch(r"\d+(kb|mb|gb)", limit)
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    environment = SERVICES["api"]["environment"]
    assert default_of(environment["GUNICORN_WORKERS"], "GUNICORN_WORKERS") == "2"
    assert environment["REDIS_URL"] == "redis://redis:6379/0"


def test_the_secrets_override_gives_each_service_the_file_variables() -> None:
    override = yaml_file(DEPLOY / "compose.secrets.yml")
    assert {name: spec["file"] for name, spec in override["secrets"].items()} == {
        name: f"./secrets/{name}" for name in SECRETS
    }
    for service in RELAY:
        assert override["services"][service]["secrets"] == list(SECRETS)
        assert override["services"][service]["environment"] == {
            f"{name.upper()}_FILE": f"/run/secrets/{name}" for name in SECRETS
        }
    assert override["services"]["prometheus"]["secrets"] == ["metrics_token"]
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert {"secrets", ".env"} <= set((ROOT / ".dockerignore").read_text().split())


def test_the_monitoring_profile_scrapes_the_api_and_provisions_grafana() -> None:
    prometheus, grafana = SERVICES["prometheus"], SERVICES["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert prometheus["entrypoint"] == ["/bin/sh", "/etc/prometheus/entrypoint.sh"]
    config = yaml_file(DEPLOY / "prometheus" / "prometheus.yml")
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8000"]}]
    assert SERVICES["api"]["ports"][0].endswith(":8000")
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "/tmp/metrics_token"}
    assert (
        "token_file=${METRICS_TOKEN_PATH:-/tmp/metrics_token}"
        in (DEPLOY / "prometheus" / "entrypoint.sh").read_text()
    )

    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if v.startswith("./")}
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    (datasource,) = yaml_file(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert (datasource["type"], datasource["url"], datasource["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    assert prometheus["ports"][0].endswith(":9090")
    (provider,) = yaml_file(provisioning / "dashboards" / "promoter-relay.yml")["providers"]
    assert mounts["./deploy/grafana"] == provider["options"]["path"]


def _entrypoint(tmp_path: Path, **env: str) -> tuple[list[str], Path]:
    stub = tmp_path / "prometheus"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    stub.chmod(0o755)
    token = tmp_path / "token"
    base = {k: v for k, v in os.environ.items() if k != "METRICS_TOKEN"}
    done = subprocess.run(
        ["sh", str(DEPLOY / "prometheus" / "entrypoint.sh"), "--web.enable-lifecycle"],
        env={**base, "PROMETHEUS": str(stub), "METRICS_TOKEN_PATH": str(token), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.split(), token


@pytest.mark.integration
def test_prometheus_gets_the_metrics_token_as_a_file(tmp_path: Path) -> None:
    argv, token = _entrypoint(tmp_path, METRICS_TOKEN_SECRET=str(tmp_path / "none"), METRICS_TOKEN="tok-1")
    assert argv == [
        "--config.file=/etc/prometheus/prometheus.yml",
        "--storage.tsdb.path=/prometheus",
        "--web.enable-lifecycle",
    ]
    assert token.read_text() == "tok-1"
    assert token.stat().st_mode & 0o077 == 0
    secret = tmp_path / "secret"
    secret.write_text("tok-from-secret\n")
    _, token = _entrypoint(tmp_path, METRICS_TOKEN_SECRET=str(secret), METRICS_TOKEN="tok-1")
    assert token.read_text() == "tok-from-secret\n"
    _, token = _entrypoint(tmp_path, METRICS_TOKEN_SECRET=str(tmp_path / "none"))
    assert token.read_text() == ""


@pytest.mark.integration
@pytest.mark.skipif(
    PROMTOOL is None and not os.environ.get("CI"), reason="needs promtool (apt-get install prometheus)"
)
def test_promtool_accepts_the_scrape_configuration(tmp_path: Path) -> None:
    """promtool reads the configuration as Prometheus would; the token file is the one the entrypoint
    writes in the container, so the copy checked here points at a file of the test's own."""
    assert PROMTOOL is not None, "CI must install Debian's prometheus package (promtool)"
    source = DEPLOY / "prometheus"
    token = tmp_path / "metrics_token"
    token.write_text("")
    text = (source / "prometheus.yml").read_text()
    assert "credentials_file: /tmp/metrics_token" in text
    (tmp_path / "prometheus.yml").write_text(text.replace("/tmp/metrics_token", str(token)))
    rules = source / "alerts.yml"  # deploy/prometheus/alerts.yml: the alert rules, tested on their own
    (tmp_path / "alerts.yml").write_text(rules.read_text() if rules.exists() else "groups: []\n")
    done = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
