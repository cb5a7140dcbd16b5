"""Docker files, checked without a Docker engine: hadolint, the compose file against the code, the entrypoint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO

from std_daq_service.config import service_kind, validate_config
from std_daq_service.metrics import exposed_names

DOCKER = REPO / "docker"


def console_scripts() -> set[str]:
    return set(re.findall(r'"(std_daq\w*)=std_daq_service', (REPO / "setup.py").read_text()))


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_match_the_code_and_their_configs_validate():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "rabbitmq", "agent", "writer", "rest"} <= set(services)
    assert "15672" in " ".join(services["rabbitmq"]["ports"]), "the management UI is published"
    declared_volumes = set(compose.get("volumes", {}))
    for name in ("agent", "writer", "rest"):
        service = services[name]
        kind = service["command"][0]
        env = service["environment"]
        assert f"std_daq_{kind}" in console_scripts(), f"{name}: no console script std_daq_{kind}"
        assert service_kind(env["SERVICE_NAME"]) == kind, f"{name}: SERVICE_NAME {env['SERVICE_NAME']} is no {kind}"
        assert env["REDIS_URL"].startswith("redis://redis:") and "@rabbitmq:" in env["BROKER_URL"]
        assert {"redis", "rabbitmq"} <= set(service["depends_on"])
        mounts = dict(v.split(":")[:2][::-1] for v in service["volumes"])
        config_dir = mounts["/config"]
        config_file = DOCKER / config_dir / Path(env["CONFIG_FILE"]).name
        assert env["CONFIG_FILE"].startswith("/config/") and config_file.exists(), f"{name}: {config_file}"
        validate_config(env["SERVICE_NAME"], json.loads(config_file.read_text()))
        for source in mounts.values():
            assert source.startswith("./") or source in declared_volumes, f"{name}: undeclared volume {source}"
    writer_config = json.loads((DOCKER / "config/obs.node1.writer.json").read_text())
    assert writer_config["agents"][0]["name"] == services["agent"]["environment"]["SERVICE_NAME"]
    assert writer_config["output_root"] in [v.split(":")[1] for v in services["writer"]["volumes"]]


def test_entrypoint_refuses_unknown_services_and_a_missing_service_name():
    entrypoint = str(DOCKER / "entrypoint.sh")
    unknown = subprocess.run(["sh", entrypoint, "bogus"], capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown service 'bogus'" in unknown.stderr
    missing = subprocess.run(["sh", entrypoint, "writer"], capture_output=True, text=True, env={"PATH": "/usr/bin"})
    assert missing.returncode == 2 and "set SERVICE_NAME" in missing.stderr


def test_the_image_installs_pinned_dependencies_before_the_code_and_ships_no_tests():
    lines = [line.strip() for line in (DOCKER / "Dockerfile").read_text().splitlines()]
    install_deps = next(i for i, line in enumerate(lines) if "-c constraints.txt" in line)
    copy_code = lines.index("COPY std_daq_service ./std_daq_service")
    assert install_deps < copy_code, "a change of the code alone must not reinstall the dependencies"
    assert not any(line.startswith("COPY tests") for line in lines)
    assert any("std_daq health" in line for line in lines), "the healthcheck reads the beacon, sends no request"
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "run"} <= ignored


def test_every_image_tag_is_pinned():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    external = [s["image"] for s in compose["services"].values() if not s["image"].startswith("std_daq")]
    base = re.search(r"ARG BASE_IMAGE=(\S+)", (DOCKER / "Dockerfile").read_text()).group(1)
    for image in [*external, base]:
        tag = image.partition(":")[2]
        assert re.match(r"v?\d+\.\d+\.\d+", tag), f"{image}: pin a full version, not a floating tag"


def test_prometheus_scrapes_every_metrics_port_of_the_service_configs():
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    services = compose["services"]
    scraped = {target for job in yaml.safe_load((DOCKER / "prometheus/prometheus.yml").read_text())["scrape_configs"]
               for group in job["static_configs"] for target in group["targets"]}
    by_config = {Path(s["environment"]["CONFIG_FILE"]).name: name for name, s in services.items()
                 if "CONFIG_FILE" in s.get("environment", {})}
    expected = set()
    for config_file in sorted((DOCKER / "config").glob("*.json")):
        config = json.loads(config_file.read_text())
        assert config.get("metrics_port"), f"{config_file.name}: no metrics_port"
        assert config.get("metrics_host") == "0.0.0.0", f"{config_file.name}: metrics reachable from other containers"
        expected.add(f"{by_config[config_file.name]}:{config['metrics_port']}")
    assert scraped == expected


def test_monitoring_profile_brings_up_prometheus_and_grafana_with_files_that_exist():
    services = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], f"{name}: only with --profile monitoring"
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            assert not source.startswith("./") or (DOCKER / source).exists(), f"{name}: {source} missing"
    provisioning = DOCKER / "grafana/provisioning"
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    dashboards_path = yaml.safe_load((provisioning / "dashboards/std_daq.yml").read_text())["providers"][0]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert mounted[dashboards_path["options"]["path"]] == "./grafana/dashboards"


def test_the_dashboard_queries_only_metrics_the_services_export():
    dashboard = json.loads((DOCKER / "grafana/dashboards/std_daq.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    named = {name for query in queries for name in re.findall(r"\bstd_daq_\w+", query)}
    assert named, "the dashboard queries no std_daq metric"
    assert named <= exposed_names(), f"not exported: {sorted(named - exposed_names())}"
    datasource = {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel}
    assert datasource == {"prometheus"}, "every panel reads the provisioned Prometheus"


AGENTS = [{"name": "test.node.hp_io_agent", "data": "tcp://127.0.0.1:5555"}]


def test_entrypoint_seeds_the_config_once_and_then_keeps_what_was_stored_since(tmp_path, redis_url, redis_client,
                                                                              new_service_name):
    name = new_service_name("writer")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "std_daq").symlink_to(Path(sys.executable).parent / "std_daq")
    (bin_dir / "std_daq_writer").write_text("#!/bin/sh\necho service started\n")  # the service itself is not run
    (bin_dir / "std_daq_writer").chmod(0o755)
    config = tmp_path / "writer.json"
    config.write_text(json.dumps({"agents": AGENTS, "output_root": "/output"}))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SERVICE_NAME": name, "CONFIG_FILE": str(config),
           "REDIS_URL": redis_url}

    def start(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), "writer"], capture_output=True, text=True,
                              env={**env, **extra}, timeout=60)

    assert start().returncode == 0
    redis_client.set(f"config.{name}", json.dumps({"agents": AGENTS, "output_root": "/changed"}))
    restarted = start()
    assert restarted.returncode == 0 and "service started" in restarted.stdout, restarted.stderr
    assert json.loads(redis_client.get(f"config.{name}"))["output_root"] == "/changed"
    assert start(CONFIG_OVERWRITE="1").returncode == 0
    assert json.loads(redis_client.get(f"config.{name}"))["output_root"] == "/output"
