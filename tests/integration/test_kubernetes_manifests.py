"""The Kubernetes manifests in jobs/kubernetes/: valid against Kubernetes' own schemas, and consistent
with the image the Containerfile builds (name and version, user, entrypoint, model cache).

kubernetes-validate ships the schemas of every Kubernetes release, so this needs no cluster and no
network. The DaskCluster is a custom resource of the dask-kubernetes operator, whose schema is not
among them: its scheduler and worker pod specs and its service are what Kubernetes itself reads, so
each is validated as a Pod or a Service.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from batchclf import __version__

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "jobs" / "kubernetes"
IMAGE = f"localhost/batchclf:{__version__}"
# podFailurePolicy with onExitCodes is stable from 1.31, the oldest release the manifests are for.
VERSIONS = ("1.31", kubernetes_validate.latest_version())


def load(name: str) -> dict:
    return yaml.safe_load((KUBERNETES / name).read_text())


def resources(cluster: dict) -> list[dict]:
    """What Kubernetes reads of a DaskCluster, as the resources the operator makes of it."""
    name = cluster["metadata"]["name"]
    found = []
    for role in ("scheduler", "worker"):
        metadata = {"name": f"{name}-{role}"}
        found.append({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": cluster["spec"][role]["spec"]})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"{name}-scheduler"}}
    found.append({**service, "spec": cluster["spec"]["scheduler"]["service"]})
    return found


def validate(resource: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{resource['kind']} {resource['metadata']['name']} is not valid for Kubernetes {version}: {error}")


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes(version):
    validate(load("cronjob.yaml"), version)
    cluster = load("daskcluster.yaml")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # a custom resource: its parts are checked
        kubernetes_validate.validate(cluster, version, strict=True)
    for resource in resources(cluster):
        validate(resource, version)


def test_validation_is_strict():
    """A misspelt field is refused, not ignored: the check above would catch one in the manifests."""
    cronjob = load("cronjob.yaml")
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    container["volumeMount"] = container.pop("volumeMounts")
    with pytest.raises(kubernetes_validate.ValidationError, match="volumeMount"):
        kubernetes_validate.validate(cronjob, VERSIONS[-1], strict=True)
    cluster = load("daskcluster.yaml")
    cluster["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"cores": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(resources(cluster)[1], VERSIONS[-1], strict=True)


def containerfile_settings() -> tuple[int, str]:
    """The user id and the model cache the Containerfile gives the image."""
    text = (REPO / "Containerfile").read_text()
    uid = re.search(r"^ARG UID=(\d+)$", text, re.M)
    cache = re.search(r"BATCHCLF_CACHE=(\S+)", text)
    assert uid and cache and re.search(r"^USER \$\{UID\}", text, re.M)
    assert re.search(r'^ENTRYPOINT \["batchclf"\]$', text, re.M)
    return int(uid.group(1)), cache.group(1)


def pods() -> list[tuple[str, dict]]:
    cluster = load("daskcluster.yaml")
    cronjob = load("cronjob.yaml")
    return [
        ("driver", cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        ("scheduler", cluster["spec"]["scheduler"]["spec"]),
        ("worker", cluster["spec"]["worker"]["spec"]),
    ]


@pytest.mark.parametrize("role", ["driver", "scheduler", "worker"])
def test_pods_run_the_image_as_its_user(role):
    uid, cache = containerfile_settings()
    pod = dict(pods())[role]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["runAsGroup"] == uid
    installed = {entry.name for entry in entry_points(group="console_scripts")}
    for container in pod["containers"]:
        assert container["image"] == IMAGE, "the tag build-here.sh gives the image of this version"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        # The entrypoint is batchclf: a pod names the program it runs, one the image installs.
        assert "args" not in container and container["command"][0] in {"batchclf", "dask"} & installed
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        assert env.get("BATCHCLF_CACHE", cache) == cache, "the image's cache holds the converted model"
