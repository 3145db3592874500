"""Each source read into the live model: compose files, Kubernetes manifests and the
client's objects, and container views (the Docker API itself is tested with a daemon in
tests/shadow/docker/test_sync_live.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shadowrl.live.sync.compose_source import read_compose
from shadowrl.live.sync.docker_source import from_views
from shadowrl.live.sync.kube_source import from_client_objects, read_manifests
from shadowrl.live.sync.model import SourceError, config_identity, guess_kind, image_tag

DATA = Path(__file__).parent / "data"


def test_compose_file_maps_labels_replicas_calls_and_environment() -> None:
    live = read_compose(DATA / "compose.yaml", env={})
    assert [c.name for c in live.components] == ["web", "api", "db", "cache"]  # no debug_tools
    web, api, db, cache = live.components
    assert web.edge and web.replicas == 3 and web.version == "v42"
    assert web.flags == ("new-cart",) and web.calls == ("api",)  # depends_on
    assert api.replicas == 2 and api.version == "17" and api.previous_version == "16"
    assert api.calls == ("db", "cache")  # the label wins over depends_on
    assert (db.kind, cache.kind) == ("datastore", "cache")
    assert web.config and web.config.startswith("cfg-")


def test_compose_interpolation_and_environment_change_the_identity() -> None:
    base = read_compose(DATA / "compose.yaml", env={})
    tagged = read_compose(DATA / "compose.yaml", env={"WEB_TAG": "v43"})
    assert tagged.get("web").version == "v43"
    assert tagged.get("web").config == base.get("web").config


def test_compose_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "compose.yaml"
    bad.write_text("services:\n  web:\n    image: x\n    deploy: {replicas: many}\n")
    with pytest.raises(SourceError, match=r"compose.yaml:2: services.web: replicas"):
        read_compose(bad, env={})
    bad.write_text("services:\n  web: [\n")
    with pytest.raises(SourceError, match=r"compose.yaml:\d+: YAML syntax error"):
        read_compose(bad, env={})
    bad.write_text("services:\n  web:\n    image: x\n    labels: {shadowrl.kind: queue}\n")
    with pytest.raises(SourceError, match="kind: must be one of service, datastore, cache"):
        read_compose(bad, env={})
    with pytest.raises(SourceError, match="no such file"):
        read_compose(tmp_path / "missing.yaml", env={})


def test_manifests_map_workloads_services_and_configmaps(tmp_path: Path) -> None:
    live = read_manifests(DATA / "k8s")
    web, api, db = live.components
    assert web.edge  # a LoadBalancer Service selects it
    assert web.version == "v42"  # app.kubernetes.io/version before the image tag
    assert web.calls == ("api",)  # the Service name api-svc resolves to its workload
    assert api.calls == ("db",) and api.version == "v17" and db.kind == "datastore"
    # a ConfigMap's data is the config identity of the workloads reading it
    changed = tmp_path / "k8s"
    changed.mkdir()
    (changed / "apps.yaml").write_text((DATA / "k8s" / "apps.yaml").read_text())
    (changed / "services.yaml").write_text(
        (DATA / "k8s" / "services.yaml").read_text().replace("mode: fast", "mode: safe"))
    again = read_manifests(changed)
    assert again.get("api").config != api.config
    assert again.get("web").config == web.config


def test_manifests_namespace_filter_and_errors(tmp_path: Path) -> None:
    assert read_manifests(DATA / "k8s", namespace="default").get("web") is not None
    with pytest.raises(SourceError, match="no Deployment or StatefulSet"):
        read_manifests(DATA / "k8s" / "services.yaml")
    bad = tmp_path / "d.yaml"
    bad.write_text("kind: Deployment\nmetadata: {name: x}\nspec: {replicas: 1}\n")
    with pytest.raises(SourceError, match=r"d.yaml:1: Deployment x: spec.template"):
        read_manifests(bad)


def test_cluster_objects_go_through_the_manifest_path() -> None:
    """What ``read_cluster`` lists, as the official client's model objects."""
    from kubernetes import client

    api = client.ApiClient()
    pod = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels={"app": "web"},
                                     annotations={"shadowrl.io/version": "v9"}),
        spec=client.V1PodSpec(containers=[client.V1Container(
            name="web", image="shop/web:abc",
            env_from=[client.V1EnvFromSource(
                config_map_ref=client.V1ConfigMapEnvSource(name="cfg"))])]))
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1DeploymentSpec(replicas=4, template=pod, selector=client.V1LabelSelector(
            match_labels={"app": "web"})))
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"), data={"A": "1"})
    live = from_client_objects(api, [("Deployment", deployment), ("ConfigMap", cm)],
                               "k8s-cluster:test/default")
    (web,) = live.components
    assert (web.name, web.replicas, web.version, web.edge) == ("web", 4, "v9", True)
    cm.data = {"A": "2"}
    again = from_client_objects(api, [("Deployment", deployment), ("ConfigMap", cm)], "x")
    assert again.components[0].config != web.config


def test_container_views_group_by_compose_service() -> None:
    def view(name: str, service: str, version: str, **labels: str) -> dict[str, object]:
        return {"name": name, "image": f"shop/{service}:{version}", "env": {"A": "1"},
                "labels": {"com.docker.compose.project": "shop",
                           "com.docker.compose.service": service, **labels}}

    live = from_views("shop", [
        view("shop-web-1", "web", "v2", **{"shadowrl.calls": "api"}),
        view("shop-web-2", "web", "v2", **{"shadowrl.calls": "api"}),
        view("shop-web-3", "web", "v1", **{"shadowrl.calls": "api"}),
        view("shop-api-1", "api", "v5"),
        view("shop-run-1", "api", "v5", **{"com.docker.compose.oneoff": "True"}),
    ])
    web, api = live.components
    assert (web.name, web.replicas, web.version, web.edge) == ("web", 3, "v2", True)
    assert api.replicas == 1  # the one-off `compose run` container is not a replica
    assert any("replicas differ" in w for w in live.warnings)
    with pytest.raises(SourceError, match="no running container"):
        from_views("shop", [])


def test_helpers() -> None:
    assert image_tag("reg:5000/a/b:1.2@sha256:ff") == "1.2"
    assert image_tag("a/b") == "latest"
    assert guess_kind("docker.io/library/postgres:16") == "datastore"
    assert guess_kind("shop/web:1") == "service"
    assert config_identity({}) is None
    assert config_identity({"a": "1"}) == config_identity({"a": "1"}) != config_identity(
        {"a": "2"})


KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
contexts: [{name: ctx, context: {cluster: c, user: u, namespace: shop}}]
current-context: ctx
users: [{name: u, user: {token: x}}]
"""


def test_cluster_mode_lists_through_the_client(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``read_cluster`` end to end with the client's API classes replaced by ones that
    answer from model objects (no cluster here)."""
    from types import SimpleNamespace

    from kubernetes import client

    from shadowrl.live.sync.kube_source import read_cluster

    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    pod = client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels={"app": "web"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="web", image="w:v5")]))
    deployment = client.V1Deployment(metadata=client.V1ObjectMeta(name="web"), spec=(
        client.V1DeploymentSpec(replicas=2, template=pod,
                                selector=client.V1LabelSelector(match_labels={"app": "web"}))))
    asked: list[str] = []

    def listing(*items: Any) -> Any:
        def call(namespace: str) -> Any:
            asked.append(namespace)
            return SimpleNamespace(items=list(items))
        return call

    monkeypatch.setattr(client, "AppsV1Api", lambda api: SimpleNamespace(
        list_namespaced_deployment=listing(deployment),
        list_namespaced_stateful_set=listing()))
    monkeypatch.setattr(client, "CoreV1Api", lambda api: SimpleNamespace(
        list_namespaced_service=listing(), list_namespaced_config_map=listing()))
    live = read_cluster(config)
    assert live.source == "k8s-cluster:current/shop" and set(asked) == {"shop"}
    assert [(c.name, c.replicas, c.version) for c in live.components] == [("web", 2, "v5")]


def test_cluster_mode_errors_are_bad_input(tmp_path: Path) -> None:
    from shadowrl.live.sync.kube_source import read_cluster

    config = tmp_path / "kubeconfig"
    config.write_text(KUBECONFIG)
    with pytest.raises(SourceError, match="--kubeconfig .*Expected object with name other"):
        read_cluster(config, context="other")
    with pytest.raises(SourceError, match="--kubeconfig"):
        read_cluster(tmp_path / "missing")
    with pytest.raises(SourceError, match="k8s-cluster: namespace team"):
        read_cluster(config, namespace="team")  # no API server answers
