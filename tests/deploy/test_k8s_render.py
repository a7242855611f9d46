"""deploy/k8s rendered by kustomize (installed from the Go module proxy by deploy/k8s/install-kustomize.sh)
and every rendered object validated offline against the Kubernetes API schemas of a named version."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
#: The Kubernetes version whose API schemas the objects must match (kubernetes-validate ships them).
KUBERNETES_VERSION = "1.30.0"
SERVICES = ("mutator", "novelty", "solver", "archivist", "trainer")
IMAGE = "sparq-stream:0.1.0"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    """``kustomize build deploy/k8s``, parsed."""
    if shutil.which("bash") is None:
        pytest.skip("no bash to run deploy/k8s/install-kustomize.sh")
    got = subprocess.run(["bash", str(K8S / "install-kustomize.sh")], capture_output=True, text=True, timeout=900)
    if got.returncode == 3:
        pytest.skip(f"kustomize cannot be installed here: {got.stderr.strip()}")
    assert got.returncode == 0, got.stderr
    kustomize = got.stdout.strip().splitlines()[-1]
    out = subprocess.run([kustomize, "build", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_every_rendered_object_matches_the_kubernetes_api_schema(rendered: list[dict[str, Any]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra: pip install -e '.[dev]'")
    assert Counter(d["kind"] for d in rendered) >= Counter(
        {"Namespace": 1, "Service": 2, "StatefulSet": 3, "Deployment": 3, "Job": 2, "ConfigMap": 2, "PersistentVolumeClaim": 2})
    for obj in rendered:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)  # raises with the object's path on any mismatch
    assert all(d["metadata"].get("namespace") == "sparq" for d in rendered if d["kind"] != "Namespace")


def test_every_sparq_container_runs_the_one_image_with_the_service_chosen_by_its_args(rendered: list[dict[str, Any]]) -> None:
    workloads = {d["metadata"]["name"]: d for d in rendered if d["kind"] in ("Deployment", "StatefulSet")}
    assert set(SERVICES) <= set(workloads)
    for name in SERVICES:
        (container,) = workloads[name]["spec"]["template"]["spec"]["containers"]
        assert container["image"] == IMAGE, name
        assert container["args"][:2] == ["run", name] and "command" not in container, name
    pods = [d["spec"]["template"]["spec"] for d in rendered if d["kind"] in ("Deployment", "StatefulSet", "Job")]
    images = {c["image"] for pod in pods for c in pod.get("initContainers", []) + pod["containers"]}
    assert images == {IMAGE, "sparq-kafka:4.4.0"}, images
