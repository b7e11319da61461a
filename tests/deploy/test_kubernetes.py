"""deploy/kubernetes/: every manifest valid against Kubernetes' own schemas (strict: an
unknown or misspelled field fails), from the copies kubernetes-validate bundles, nothing
downloaded; and consistent with the gateway and the image: settings, probes on real routes,
ports, the providers file, the non-root user, the objects each manifest refers to."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from spendgate.cli import build_parser, cmd_migrate, cmd_serve
from spendgate.config import Settings
from spendgate.config.catalog_types import Provider
from tests.deploy.files import (
    IMAGE,
    KUBERNETES,
    SETTINGS_ENV,
    get_routes,
    load_providers,
    yaml_documents,
)
from tests.deploy.test_dockerfile import IMAGE_UID
from tests.test_deploy_files import as_dict, as_list, as_str

NAMESPACE = "spendgate"
# The oldest Kubernetes the manifests are checked against, and the newest bundled.
VERSIONS = ["1.29", kubernetes_validate.latest_version()]

Object = dict[str, object]


def manifests() -> list[tuple[Path, Object]]:
    return [
        (path, document)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for document in yaml_documents(path)
    ]


def find(kind: str, name: str | None = None) -> Object:
    found = [
        doc
        for _, doc in manifests()
        if doc["kind"] == kind and (name is None or metadata(doc)["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def metadata(doc: Object) -> Object:
    return as_dict(doc["metadata"], "metadata")


def spec(doc: Object) -> Object:
    return as_dict(doc["spec"], f"{doc['kind']}.spec")


def pod_spec(doc: Object) -> Object:
    return as_dict(as_dict(spec(doc)["template"], "template")["spec"], "pod spec")


def pod_labels(doc: Object) -> Object:
    template = as_dict(spec(doc)["template"], "template")
    return as_dict(as_dict(template["metadata"], "metadata")["labels"], "labels")


def container(doc: Object) -> Object:
    (only,) = as_list(pod_spec(doc)["containers"], "containers")
    return as_dict(only, "container")


def string_data(name: str) -> dict[str, str]:
    data = as_dict(find("Secret", name)["stringData"], name)
    return {key: str(value) for key, value in data.items()}


def settings_map() -> dict[str, str]:
    data = as_dict(find("ConfigMap", "spendgate-settings")["data"], "data")
    return {key: str(value) for key, value in data.items()}


def gateway() -> Object:
    return find("Deployment", "spendgate")


def pod_env() -> dict[str, str]:
    """The environment the gateway pods get: ConfigMap, then Secrets (envFrom order)."""
    env: dict[str, str] = {}
    for source in as_list(container(gateway())["envFrom"], "envFrom"):
        ref = as_dict(source, "envFrom")
        if "configMapRef" in ref:
            name = as_str(as_dict(ref["configMapRef"], "ref")["name"], "name")
            data = as_dict(find("ConfigMap", name)["data"], name)
            env.update({key: str(value) for key, value in data.items()})
        else:
            env.update(string_data(as_str(as_dict(ref["secretRef"], "ref")["name"], "name")))
    return env


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    kinds = set()
    for path, document in manifests():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{path.name}: {document['kind']} {where}: {exc.message}")
        kinds.add(str(document["kind"]))
    assert kinds == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Job",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


def test_strict_validation_catches_a_misspelled_field() -> None:
    broken = gateway() | {"spec": spec(gateway()) | {"replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)


def test_everything_lives_in_the_namespace() -> None:
    assert metadata(find("Namespace"))["name"] == NAMESPACE
    for path, document in manifests():
        if document["kind"] != "Namespace":
            assert metadata(document)["namespace"] == NAMESPACE, path.name


def test_pods_run_as_the_image_user_without_privileges() -> None:
    for document in (gateway(), find("Job", "spendgate-migrate")):
        pod = pod_spec(document)
        context = as_dict(pod["securityContext"], "securityContext")
        assert context["runAsNonRoot"] is True and context["runAsUser"] == IMAGE_UID
        assert as_dict(context["seccompProfile"], "seccomp")["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        box = container(document)
        assert box["image"] == IMAGE
        own = as_dict(box["securityContext"], "securityContext")
        assert own["allowPrivilegeEscalation"] is False
        assert own["readOnlyRootFilesystem"] is True
        assert as_dict(own["capabilities"], "capabilities")["drop"] == ["ALL"]
        resources = as_dict(box["resources"], "resources")
        for bound in ("requests", "limits"):
            assert set(as_dict(resources[bound], bound)) == {"cpu", "memory"}
    labels = as_dict(metadata(find("Namespace"))["labels"], "labels")
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def args(document: Object) -> list[str]:
    return [as_str(arg, "args") for arg in as_list(container(document)["args"], "args")]


def test_the_gateway_runs_serve_and_the_job_migrate() -> None:
    job = find("Job", "spendgate-migrate")
    assert build_parser().parse_args(args(gateway())).func is cmd_serve
    assert build_parser().parse_args(args(job)).func is cmd_migrate
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert isinstance(spec(job)["ttlSecondsAfterFinished"], int)
    # The Job gets the database URL and nothing else.
    (variable,) = (as_dict(v, "env") for v in as_list(container(job)["env"], "env"))
    ref = as_dict(as_dict(variable["valueFrom"], "valueFrom")["secretKeyRef"], "ref")
    assert variable["name"] == ref["key"] == "SPENDGATE_DATABASE_URL"
    assert ref["key"] in string_data(as_str(ref["name"], "name"))


def test_pod_environment_is_valid_settings(tmp_path: Path) -> None:
    env = pod_env()
    _, provider_vars = configmap_providers(tmp_path)
    spendgate = {key for key in env if key.startswith("SPENDGATE_")}
    assert spendgate <= SETTINGS_ENV
    assert set(env) - spendgate == provider_vars
    settings = Settings.from_env(env)
    assert settings.host == "0.0.0.0" and settings.metrics_port is not None
    # The worker count is explicit (the default counts the node's cores) and fits the pod.
    limits = as_dict(as_dict(container(gateway())["resources"], "resources")["limits"], "")
    assert 1 <= settings.workers <= int(as_str(limits["cpu"], "cpu"))
    for value in string_data("spendgate-secrets").values():
        assert "REPLACE-ME" in value  # a placeholder nobody can take for a real value
    assert set(string_data("spendgate-provider-keys").values()) == {""}


def configmap_providers(tmp_path: Path) -> tuple[list[Provider], frozenset[str]]:
    """The providers file of the ConfigMap, parsed by spendgate's own loader, and the
    variables it reads."""
    data = as_dict(find("ConfigMap", "spendgate-providers")["data"], "data")
    assert set(data) == {"providers.toml"}
    file = tmp_path / "providers.toml"
    file.write_text(as_str(data["providers.toml"], "providers.toml"), encoding="utf-8")
    return load_providers(file)


def test_the_providers_file_parses_and_is_mounted_where_the_setting_points(
    tmp_path: Path,
) -> None:
    providers, reads = configmap_providers(tmp_path)
    assert [p.name for p in providers] == ["openai", "groq", "vllm"]
    assert reads == set(string_data("spendgate-provider-keys"))

    pod = pod_spec(gateway())
    volumes = {
        as_dict(v, "volume")["name"]: as_dict(v, "volume") for v in as_list(pod["volumes"], "")
    }
    setting = Path(settings_map()["SPENDGATE_PROVIDERS_FILE"])
    (mount,) = (
        as_dict(m, "mount")
        for m in as_list(container(gateway())["volumeMounts"], "volumeMounts")
        if as_dict(m, "mount")["mountPath"] == str(setting.parent)
    )
    assert mount["readOnly"] is True
    source = as_dict(volumes[mount["name"]]["configMap"], "configMap")
    assert source["name"] == "spendgate-providers"
    assert setting.name in as_dict(find("ConfigMap", "spendgate-providers")["data"], "data")
    # The root filesystem is read-only: /tmp is a volume of its own.
    assert any(
        as_dict(m, "m")["mountPath"] == "/tmp"
        for m in as_list(container(gateway())["volumeMounts"], "")
    )


def ports() -> dict[str, int]:
    found = {}
    for entry in as_list(container(gateway())["ports"], "ports"):
        port = as_dict(entry, "port")
        found[as_str(port["name"], "name")] = int(str(port["containerPort"]))
    return found


def test_probes_ask_the_real_health_routes_on_the_listen_port() -> None:
    box = container(gateway())
    settings = Settings.from_env(pod_env())
    assert ports() == {"http": settings.port, "metrics": settings.metrics_port}
    expected = {
        "readinessProbe": "/readyz",
        "livenessProbe": "/healthz",
        "startupProbe": "/healthz",
    }
    for probe, path in expected.items():
        check = as_dict(as_dict(box[probe], probe)["httpGet"], probe)
        assert (check["path"], check["port"]) == (path, "http"), probe
        assert path in get_routes()


def test_prometheus_annotations_name_the_metrics_port() -> None:
    template = as_dict(spec(gateway())["template"], "template")
    annotations = as_dict(as_dict(template["metadata"], "metadata")["annotations"], "")
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(as_str(annotations["prometheus.io/port"], "port")) == ports()["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_the_service_selects_the_pods_and_exposes_only_the_api() -> None:
    service = spec(find("Service", "spendgate"))
    selector = as_dict(service["selector"], "selector")
    assert selector.items() <= pod_labels(gateway()).items()
    assert as_dict(spec(gateway())["selector"], "selector")["matchLabels"] == selector
    (port,) = (as_dict(p, "port") for p in as_list(service["ports"], "ports"))
    assert port["targetPort"] == "http"  # not the metrics port


def test_the_hpa_owns_the_replica_count() -> None:
    hpa = spec(find("HorizontalPodAutoscaler", "spendgate"))
    target = as_dict(hpa["scaleTargetRef"], "scaleTargetRef")
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "spendgate"}
    assert "replicas" not in spec(gateway())  # `kubectl apply` would reset the HPA's count
    minimum, maximum = hpa["minReplicas"], hpa["maxReplicas"]
    assert isinstance(minimum, int) and isinstance(maximum, int)
    assert 3 <= minimum < maximum
    # CPU utilisation is relative to the request, which must be set.
    requests = as_dict(as_dict(container(gateway())["resources"], "resources")["requests"], "")
    assert "cpu" in requests


def test_the_disruption_budget_keeps_replicas_serving() -> None:
    pdb = spec(find("PodDisruptionBudget", "spendgate"))
    selector = as_dict(as_dict(pdb["selector"], "selector")["matchLabels"], "matchLabels")
    assert selector == as_dict(spec(gateway())["selector"], "selector")["matchLabels"]
    unavailable = pdb["maxUnavailable"]
    minimum = spec(find("HorizontalPodAutoscaler", "spendgate"))["minReplicas"]
    assert isinstance(unavailable, int) and isinstance(minimum, int)
    assert minimum - unavailable >= 2
    # A rollout never takes a serving pod away before its replacement is ready.
    rollout = as_dict(as_dict(spec(gateway())["strategy"], "strategy")["rollingUpdate"], "")
    assert rollout["maxUnavailable"] == 0


def test_every_referenced_config_map_and_secret_exists() -> None:
    defined = {(str(doc["kind"]), str(metadata(doc)["name"])) for _, doc in manifests()}
    for document in (gateway(), find("Job", "spendgate-migrate")):
        refs: list[tuple[str, object]] = []
        box = container(document)
        for source in as_list(box.get("envFrom", []), "envFrom"):
            entry = as_dict(source, "envFrom")
            refs += [("ConfigMap", r) for key, r in entry.items() if key == "configMapRef"]
            refs += [("Secret", r) for key, r in entry.items() if key == "secretRef"]
        for variable in as_list(box.get("env", []), "env"):
            value_from = as_dict(as_dict(variable, "env").get("valueFrom", {}), "valueFrom")
            refs += [("Secret", r) for key, r in value_from.items() if key == "secretKeyRef"]
        for volume in as_list(pod_spec(document).get("volumes", []), "volumes"):
            refs += [("ConfigMap", r) for k, r in as_dict(volume, "v").items() if k == "configMap"]
        assert refs
        for kind, ref in refs:
            assert (kind, as_dict(ref, "ref")["name"]) in defined
