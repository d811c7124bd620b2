"""deploy/: every YAML loads; compose and Kubernetes files have the structure the README promises;
the commands they run parse with sctranslator's own CLI; `docker compose config` where compose exists."""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from datafiles import data_file

from sctranslator.cli.entry import build_parser
from sctranslator.export.command import define_export
from sctranslator.export.triton_server import TRITON_IMAGE

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose" / "compose-spec.json"
K8S = DEPLOY / "k8s"
YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [document for path in sorted(K8S.glob("*.yaml")) for document in load(path)]


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def parse_translate(command: list[str]) -> argparse.Namespace:
    assert command[:2] == ["sctranslator", "translate"]
    return build_parser().parse_args(command[1:])


def parse_export(command: list[str]) -> argparse.Namespace:
    assert command[:2] == ["sctranslator", "export"]
    parser = argparse.ArgumentParser()
    define_export(parser)
    return parser.parse_args(command[2:])


def test_every_yaml_file_loads() -> None:
    assert {p.name for p in YAML_FILES} >= {"docker-compose.yml", "triton.yaml", "dask.yaml", "translate-job.yaml",
                                            "storage.yaml"}
    for path in YAML_FILES:
        assert load(path), f"{path} is empty"


def test_compose_serves_triton_on_a_gpu_with_a_health_check() -> None:
    services = load(COMPOSE)[0]["services"]
    assert set(services) == {"export", "triton", "scheduler", "worker", "translate"}
    triton = services["triton"]
    assert triton["image"] == TRITON_IMAGE
    assert {port.split(":")[1] for port in triton["ports"]} == {"8000", "8001", "8002"}
    assert "--model-repository=/models" in triton["command"]
    assert any(volume.endswith("/triton-repo:/models:ro") for volume in triton["volumes"])
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert triton["depends_on"]["export"]["condition"] == "service_completed_successfully"


def test_compose_export_writes_the_repository_triton_reads() -> None:
    services = load(COMPOSE)[0]["services"]
    args = parse_export(services["export"]["command"])
    assert args.export_format == "triton"
    assert str(args.repo) == "/data/triton-repo" and args.backend == "onnxruntime" and args.kind == "gpu"
    assert args.dynamic_batching and args.preferred_batch_sizes == [32, 64]


def test_compose_job_runs_on_the_dask_cluster_against_triton() -> None:
    services = load(COMPOSE)[0]["services"]
    args = parse_translate(services["translate"]["command"])
    assert (args.backend, args.scheduler, args.url, args.protocol) == ("triton", "tcp://scheduler:8786",
                                                                       "triton:8001", "grpc")
    assert args.model_name == "sctranslator"
    assert services["translate"]["depends_on"]["triton"]["condition"] == "service_healthy"
    assert services["translate"]["depends_on"]["scheduler"]["condition"] == "service_healthy"
    assert services["scheduler"]["command"][:2] == ["dask", "scheduler"] and "8786" in services["scheduler"]["command"]
    assert services["worker"]["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    # Workers read inputs and write outputs themselves: they mount the same data volume as the job.
    for name in ("worker", "translate", "export"):
        assert services[name]["volumes"] == services["translate"]["volumes"]
        assert services[name]["image"] == "sctranslator:latest"
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / "Dockerfile").exists()


def test_kubernetes_objects_have_known_kinds_and_api_versions() -> None:
    expected = {"Deployment": "apps/v1", "Service": "v1", "Job": "batch/v1", "PersistentVolumeClaim": "v1"}
    objects = k8s_objects()
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("Deployment", "dask-scheduler"), ("Deployment", "dask-worker"), ("Deployment", "triton"),
        ("Job", "sctranslator-translate"), ("PersistentVolumeClaim", "sctranslator-data"),
        ("Service", "dask-scheduler"), ("Service", "triton")]
    for item in objects:
        assert item["apiVersion"] == expected[item["kind"]], item["metadata"]["name"]
        if item["kind"] == "Deployment":
            labels = item["spec"]["template"]["metadata"]["labels"]
            assert item["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_kubernetes_triton_has_probes_a_gpu_and_a_service() -> None:
    pod = find("Deployment", "triton")["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    assert server["image"] == TRITON_IMAGE
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    ports = {port["name"]: port["containerPort"] for port in server["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert server["readinessProbe"]["httpGet"]["port"] in ports
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    (export,) = pod["initContainers"]
    assert parse_export(export["command"]).repo == Path("/data/triton-repo")
    assert "--model-repository=/data/triton-repo" in server["command"]
    service = find("Service", "triton")["spec"]
    assert service["selector"] == find("Deployment", "triton")["spec"]["selector"]["matchLabels"]
    assert {port["port"] for port in service["ports"]} == {8000, 8001, 8002}


def test_kubernetes_job_translates_through_the_services() -> None:
    job = find("Job", "sctranslator-translate")["spec"]
    assert job["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    (container,) = job["template"]["spec"]["containers"]
    args = parse_translate(container["command"])
    triton_port = {p["name"]: p["port"] for p in find("Service", "triton")["spec"]["ports"]}["grpc"]
    scheduler_port = {p["name"]: p["port"] for p in find("Service", "dask-scheduler")["spec"]["ports"]}["comm"]
    assert args.url == f"triton:{triton_port}" and args.protocol == "grpc"
    assert args.scheduler == f"tcp://dask-scheduler:{scheduler_port}"
    (worker,) = find("Deployment", "dask-worker")["spec"]["template"]["spec"]["containers"]
    assert worker["command"][:3] == ["dask", "worker", f"tcp://dask-scheduler:{scheduler_port}"]
    claims = {v["persistentVolumeClaim"]["claimName"] for item in (job["template"]["spec"],
              find("Deployment", "dask-worker")["spec"]["template"]["spec"],
              find("Deployment", "triton")["spec"]["template"]["spec"]) for v in item["volumes"]
              if "persistentVolumeClaim" in v}
    assert claims == {"sctranslator-data"}


def test_readme_gives_the_commands() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for text in ("docker compose -f deploy/docker-compose.yml", "kubectl apply -f deploy/k8s/triton.yaml",
                 "sctranslator export triton", "scripts/install_tritonserver.sh", TRITON_IMAGE):
        assert text in readme


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def _compose_document(text: str, environment: dict[str, str]) -> Any:
    """The compose file as `docker compose` sees it before validation: ${VAR:-default} interpolated."""
    def value(match: re.Match) -> str:
        return environment.get(match["name"]) or (match["default"] or "")

    return yaml.safe_load(_INTERPOLATION.sub(value, text))


def test_compose_file_is_valid_against_the_compose_specification(tmp_path: Path) -> None:
    """The schema check of `docker compose config`, against the Compose Specification's own schema."""
    import jsonschema

    schema = json.loads(data_file(COMPOSE_SCHEMA).read_text())
    validator = jsonschema.Draft7Validator(schema)
    document = _compose_document(COMPOSE.read_text(), {"SCTRANSLATOR_DATA": str(tmp_path)})
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    assert {"export", "triton", "translate"} <= set(document["services"])
    # The validator does reject what compose rejects (so the check above is not vacuous).
    broken = copy.deepcopy(document)
    broken["services"]["triton"]["ports"] = {"http": 8000}
    broken["services"]["triton"]["restart_policy"] = "always"
    assert len(list(validator.iter_errors(broken))) >= 2
    if _has_compose():  # where the docker CLI has the plugin, its own check too
        done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"], capture_output=True,
                              text=True, timeout=60,
                              env={"SCTRANSLATOR_DATA": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
