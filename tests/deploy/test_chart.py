"""The Helm chart, linted and rendered with the real Helm engine, with default values and
with each switch flipped; the manifests are parsed and checked."""
import base64
import json
import pathlib
import re
import shutil
import subprocess
import tomllib

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART,
    ROOT,
    SIDECAR,
    container,
    deep_merge,
    env_of,
    find,
    kinds,
    pod_spec,
    render,
    rendered_config,
)

# The oldest Kubernetes the chart supports: native sidecars and ContainerResource metrics.
KUBE_VERSION = "1.30.0"

HTTPS_GEN = {"httpsProxy": {"enabled": True, "ca": {"genCA": True}}}
HTTPS_EXISTING = {"httpsProxy": {"enabled": True, "ca": {"existingSecret": "my-ca"}}}

# Every switch, flipped from its default.
SWITCHES = {
    "defaults": {},
    "classic": {"nativeSidecar": False},
    "https-genca": HTTPS_GEN,
    "https-existing-ca": HTTPS_EXISTING,
    "servicemonitor": {"serviceMonitor": {"enabled": True}},
    "networkpolicy": {"networkPolicy": {"enabled": True}},
    "no-deployment": {"deployment": {"enabled": False}},
    "no-service": {"service": {"enabled": False}},
    "no-pdb": {"podDisruptionBudget": {"enabled": False}},
    "no-dashboard": {"dashboard": {"enabled": False}},
    "existing-configmap": {"existingConfigMap": "team-config"},
    "secrets-optional": {"secrets": {"optional": True}},
    "digest": {"image": {"digest": "sha256:" + "ab" * 32}},
    "classic-https": {"nativeSidecar": False, **HTTPS_GEN},
    "hpa": {"autoscaling": {"enabled": True}},
    "hpa-every-metric": {"autoscaling": {
        "enabled": True,
        "cpu": {"container": "llm-sidecar"},
        "memory": {"averageUtilization": 80},
        "inFlightRequests": {"enabled": True},
    }},
}


def values_file():
    return yaml.safe_load((CHART / "values.yaml").read_text())


def test_chart_version_matches_the_crate_and_the_image_tag():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    crate = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    assert chart["appVersion"] == crate
    assert values_file()["image"]["tag"] == crate


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_lint_is_clean(switch):
    import helm_python

    report = helm_python.lint(str(CHART), SWITCHES[switch], strict=True, kube_version="v" + KUBE_VERSION)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems
    assert report["total_charts_linted"] == 1


def test_values_schema_is_generated_from_the_sidecars_schema():
    r = subprocess.run(
        ["python3", ROOT / "scripts/chart_schema.py", "--binary", SIDECAR, "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("switch", sorted(SWITCHES))
def test_every_switch_renders_objects_kubernetes_can_read(switch):
    docs = render(SWITCHES[switch])
    assert docs
    for d in docs:
        assert d.get("apiVersion") and d.get("kind"), d["_template"]
        name = d["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        assert d["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
        # Against the API's own OpenAPI schema, unknown fields refused (the CRDs of
        # prometheus-operator are not in it).
        if not d["apiVersion"].startswith("monitoring.coreos.com/"):
            obj = {k: v for k, v in d.items() if k != "_template"}
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def sidecar_of(docs):
    return container(pod_spec(docs), "llm-sidecar")


def test_default_objects():
    docs = render()
    assert kinds(docs) == ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]
    # The dashboard ConfigMap carries the dashboard file as is.
    dash = find(docs, "ConfigMap", "demo-llm-sidecar-dashboard")
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["llm-sidecar.json"]) == json.loads(
        (CHART / "dashboards/llm-sidecar.json").read_text()
    )
    svc = find(docs, "Service")
    assert svc["spec"]["ports"] == [{"name": "admin", "port": 9901, "targetPort": 9901, "protocol": "TCP"}]
    assert svc["spec"]["selector"] == find(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    pdb = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]


def test_native_sidecar_starts_first_and_stops_last():
    docs = render()
    spec = pod_spec(docs)
    where, sc = sidecar_of(docs)
    assert where == "initContainers"
    assert sc["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["app"]
    assert "lifecycle" not in sc
    # The kubelet starts the app once the startup probe passes.
    assert sc["startupProbe"]["httpGet"] == {"path": "/readyz", "port": 9901}


def test_classic_sidecar_is_first_holds_the_app_and_outlives_its_drain():
    docs = render({"nativeSidecar": False, "classicPreStopSeconds": 20})
    spec = pod_spec(docs)
    assert not spec.get("initContainers")
    assert [c["name"] for c in spec["containers"]] == ["llm-sidecar", "app"]
    sc = spec["containers"][0]
    assert "restartPolicy" not in sc
    assert sc["lifecycle"]["postStart"]["exec"]["command"] == [
        "/usr/local/bin/llm-sidecar", "wait-ready", "--timeout", "60s"]
    assert sc["lifecycle"]["preStop"]["exec"]["command"] == ["/usr/local/bin/llm-sidecar", "sleep", "20s"]


def test_hook_commands_exist_in_the_binary():
    # The hooks run the image's binary: the subcommands must exist and parse these args.
    r = subprocess.run([SIDECAR, "sleep", "10ms"], capture_output=True, timeout=10)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([SIDECAR, "wait-ready", "--url", "http://127.0.0.1:9/readyz", "--timeout", "300ms"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "not ready after" in r.stderr, r.stderr


@pytest.mark.parametrize("native", [True, False])
def test_probes(native):
    _, sc = sidecar_of(render({"nativeSidecar": native}))
    assert sc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9901}
    assert sc["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9901}
    assert sc["startupProbe"]["failureThreshold"] * sc["startupProbe"]["periodSeconds"] >= 30
    ports = {p["name"]: p["containerPort"] for p in sc["ports"]}
    assert ports == {"llm-reverse": 8080, "llm-admin": 9901}


def assert_locked_down(c):
    s = c["securityContext"]
    assert s["runAsNonRoot"] is True and s["runAsUser"] == 65532, c["name"]
    assert s["allowPrivilegeEscalation"] is False, c["name"]
    assert s["readOnlyRootFilesystem"] is True, c["name"]
    assert s["capabilities"]["drop"] == ["ALL"] and "add" not in s["capabilities"], c["name"]
    assert s["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
    r = c["resources"]
    for k in ("cpu", "memory"):
        assert r["requests"][k] and r["limits"][k], (c["name"], k)


@pytest.mark.parametrize("switch", ["defaults", "classic", "https-genca", "classic-https"])
def test_security_context_and_resources(switch):
    docs = render(SWITCHES[switch])
    spec = pod_spec(docs)
    _, sc = sidecar_of(docs)
    assert_locked_down(sc)
    if "https" in switch:
        _, trust = container(spec, "llm-sidecar-trust", "initContainers")
        assert_locked_down(trust)
        assert spec["initContainers"][0]["name"] == "llm-sidecar-trust", "the bundle is written before anything runs"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    _, app = container(spec, "app", "containers")
    assert app["securityContext"]["readOnlyRootFilesystem"] is True


def test_config_and_keys_are_directory_mounts_the_app_cannot_see():
    docs = render(HTTPS_GEN)
    spec = pod_spec(docs)
    _, sc = sidecar_of(docs)
    mounts = {m["name"]: m for m in sc["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert mounts["llm-sidecar-config"]["mountPath"] == "/etc/llm-sidecar"
    assert mounts["llm-sidecar-keys"]["mountPath"] == "/var/run/secrets/llm-sidecar"
    assert mounts["llm-sidecar-ca"]["mountPath"] == "/var/run/llm-sidecar/ca"
    for m in mounts.values():
        # subPath mounts never see the kubelet's updates.
        assert "subPath" not in m and "subPathExpr" not in m, m
        assert m["readOnly"] is True
    assert volumes["llm-sidecar-config"]["configMap"]["name"] == "demo-llm-sidecar-config"
    assert volumes["llm-sidecar-keys"]["secret"]["secretName"] == "llm-sidecar-keys"
    assert volumes["llm-sidecar-ca"]["secret"]["secretName"] == "demo-llm-sidecar-ca"
    # The CA volume carries only what the sidecar reads (no root key).
    assert [i["key"] for i in volumes["llm-sidecar-ca"]["secret"]["items"]] == [
        "ca.pem", "intermediate.pem", "intermediate.key"]
    assert env_of(sc)["LLM_SIDECAR_CONFIG"] == "/etc/llm-sidecar/sidecar.yaml"
    # The app sees the trust bundle only.
    _, app = container(spec, "app", "containers")
    assert [m["name"] for m in app["volumeMounts"]] == ["app-tmp", "llm-sidecar-trust"]


def test_base_url_env_for_the_app():
    docs = render({"ports": {"reverse": 18080}})
    _, app = container(pod_spec(docs), "app", "containers")
    env = env_of(app)
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:18080/openai/v1"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:18080/anthropic"
    assert env["OPENAI_API_KEY"].startswith("sk-placeholder")
    assert "HTTPS_PROXY" not in env and "SSL_CERT_FILE" not in env


def test_https_proxy_env_for_the_app():
    docs = render(deep_merge(HTTPS_GEN, {"httpsProxy": {"noProxy": ["db.internal"]}}))
    _, app = container(pod_spec(docs), "app", "containers")
    env = env_of(app)
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://127.0.0.1:3128"
    assert env["NO_PROXY"] == env["no_proxy"] == "127.0.0.1,localhost,::1,.svc,.cluster.local,db.internal"
    for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        assert env[k] == "/var/run/llm-sidecar/trust/ca-bundle.pem", k
    _, sc = sidecar_of(docs)
    assert {"name": "llm-forward", "containerPort": 3128, "protocol": "TCP"} in sc["ports"]


def test_generated_ca_secret():
    docs = render(HTTPS_GEN)
    s = find(docs, "Secret", "demo-llm-sidecar-ca")
    assert s["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
    assert set(data) == {"ca.pem", "intermediate.pem", "intermediate.key"}
    assert data["ca.pem"] == data["intermediate.pem"]
    assert "BEGIN EC PRIVATE KEY" in data["intermediate.key"]
    # With an existing CA Secret, the chart makes none.
    assert not [d for d in render(HTTPS_EXISTING) if d["kind"] == "Secret"]


def test_https_proxy_without_a_ca_is_refused_with_the_fix():
    from helm_python import HelmRenderError

    with pytest.raises(HelmRenderError, match="existingSecret .* or httpsProxy.ca.genCA"):
        render({"httpsProxy": {"enabled": True}})


def test_config_map_sets_the_chart_owned_keys():
    cfg = yaml.safe_load(rendered_config(render({"ports": {"reverse": 18080, "admin": 19901}})))
    assert cfg["listeners"] == {"reverse": "127.0.0.1:18080", "admin": "0.0.0.0:19901"}
    assert "forward" not in cfg
    cfg = yaml.safe_load(rendered_config(render(HTTPS_GEN)))
    assert cfg["listeners"]["forward"] == "127.0.0.1:3128"
    # The CA comes from its Secret: a sidecar that made its own when the mount is empty
    # would sign with a CA no app trusts.
    assert cfg["forward"]["ca"] == {"dir": "/var/run/llm-sidecar/ca", "create_if_missing": False}
    # Every ${file:...} the default config reads is in the Secret's mount.
    refs = re.findall(r"\$\{file:([^}]+)\}", rendered_config(render()))
    assert refs and all(r.startswith("/var/run/secrets/llm-sidecar/") for r in refs), refs


def test_existing_configmap_replaces_the_charts():
    docs = render({"existingConfigMap": "team-config"})
    assert not [d for d in docs if d["kind"] == "ConfigMap" and "sidecar.yaml" in d.get("data", {})]
    vols = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert vols["llm-sidecar-config"]["configMap"]["name"] == "team-config"


def test_service_monitor_and_network_policy():
    docs = render({"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
                   "networkPolicy": {"enabled": True}})
    sm = find(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "15s"}]
    assert sm["spec"]["selector"]["matchLabels"] == find(docs, "Service")["spec"]["selector"]
    np = find(docs, "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Egress"]
    dns, providers = np["spec"]["egress"]
    assert {"protocol": "UDP", "port": 53} in dns["ports"]
    assert providers["ports"] == [{"protocol": "TCP", "port": 443}]
    block = providers["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["except"] and "169.254.0.0/16" in block["except"]


# -- the HorizontalPodAutoscaler ----------------------------------------------------

HPA = {"autoscaling": {"enabled": True}}


def hpa_of(autoscaling):
    docs = render(deep_merge(HPA, {"autoscaling": autoscaling}))
    return docs, find(docs, "HorizontalPodAutoscaler")


def test_autoscaling_targets_the_deployment_and_owns_its_replica_count():
    # Off by default: no HPA, and the Deployment keeps its replicas.
    off = render()
    assert "HorizontalPodAutoscaler" not in kinds(off)
    assert find(off, "Deployment")["spec"]["replicas"] == values_file()["deployment"]["replicas"]

    docs, hpa = hpa_of({})
    assert kinds(docs) == ["ConfigMap", "ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                           "PodDisruptionBudget", "Service"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    dep = find(docs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": dep["apiVersion"], "kind": "Deployment", "name": dep["metadata"]["name"]}
    # The HPA sets the replica count; a replicas field in the Deployment would fight it on
    # every `helm upgrade`.
    assert "replicas" not in dep["spec"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    # By default the pod's CPU (app and sidecar) over the sum of their requests.
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    down = hpa["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
    assert hpa["metadata"]["labels"] == dep["metadata"]["labels"]
    # With no Deployment of the chart's own, there is nothing to scale.
    assert "HorizontalPodAutoscaler" not in kinds(render(deep_merge(HPA, {"deployment": {"enabled": False}})))


def test_autoscaling_on_one_container_memory_and_in_flight_requests():
    _, hpa = hpa_of({
        "minReplicas": 3, "maxReplicas": 30,
        "cpu": {"averageUtilization": 60, "container": "llm-sidecar"},
        "memory": {"averageUtilization": 80, "container": "app"},
        "inFlightRequests": {"enabled": True, "averageValue": "50"},
        "extraMetrics": [{"type": "External", "external": {
            "metric": {"name": "queue_depth"}, "target": {"type": "Value", "value": "100"}}}],
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 600}},
    })
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 30)
    cpu, memory, in_flight, extra = hpa["spec"]["metrics"]
    assert cpu == {"type": "ContainerResource", "containerResource": {
        "name": "cpu", "container": "llm-sidecar", "target": {"type": "Utilization", "averageUtilization": 60}}}
    assert memory == {"type": "ContainerResource", "containerResource": {
        "name": "memory", "container": "app", "target": {"type": "Utilization", "averageUtilization": 80}}}
    # The metric the sidecar exports, as the Prometheus adapter serves it per pod.
    assert in_flight == {"type": "Pods", "pods": {
        "metric": {"name": "llm_sidecar_requests_in_flight"},
        "target": {"type": "AverageValue", "averageValue": "50"}}}
    assert extra["external"]["metric"]["name"] == "queue_depth"
    # behavior merges key by key: the scale-down policies stay, the window changes.
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 600
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"]
    # Only CPU off, in-flight requests alone.
    _, hpa = hpa_of({"cpu": {"averageUtilization": None}, "inFlightRequests": {"enabled": True}})
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]


def test_the_metric_the_hpa_reads_is_one_the_sidecar_exports():
    # llm_sidecar_requests_in_flight must be in the binary's metrics, or the adapter rule
    # in docs/kubernetes.md serves nothing and the HPA scales on a missing metric.
    name = values_file()["autoscaling"]["inFlightRequests"]["metric"]
    src = (ROOT / "src/observability/metrics.rs").read_text()
    assert f'"{name}"' in src
    assert name in (ROOT / "docs/kubernetes.md").read_text()


@pytest.mark.parametrize("values,message", [
    ({"minReplicas": 5, "maxReplicas": 3}, r"minReplicas \(5\) is above autoscaling.maxReplicas \(3\)"),
    ({"cpu": {"averageUtilization": None}}, "needs at least one metric"),
    ({"cpu": {"container": "web"}}, "container \"web\" is neither llm-sidecar nor the app"),
    ({"cpu": {"container": "llm-sidecar"}, "_resources": {"requests": {"cpu": None}}},
     "llm-sidecar's utilization, which is measured against its cpu request: set it"),
    ({"memory": {"averageUtilization": 80}, "_app": {"requests": {"memory": None}}},
     "pod's utilization, which is measured against the sum of its containers' memory requests"),
], ids=["min-above-max", "no-metric", "unknown-container", "no-sidecar-request", "no-app-request"])
def test_autoscaling_refuses_what_the_hpa_could_not_compute(values, message):
    from helm_python import HelmRenderError

    values = dict(values)
    extra = {}
    if "_resources" in values:
        extra["resources"] = values.pop("_resources")
    if "_app" in values:
        extra["deployment"] = {"app": {"resources": values.pop("_app")}}
    with pytest.raises(HelmRenderError, match=message):
        render(deep_merge(deep_merge(HPA, {"autoscaling": values}), extra))


def test_library_templates_in_another_chart(tmp_path):
    """A chart of its own that depends on this one and adds the sidecar to its Deployment
    with the named templates, as docs/kubernetes.md shows."""
    app = tmp_path / "shop"
    shutil.copytree(ROOT / "tests/deploy/consumer", app)
    (app / "charts").mkdir()
    shutil.copytree(CHART, app / "charts/llm-sidecar")
    for native in (True, False):
        docs = render({"llm-sidecar": {"nativeSidecar": native}}, name="shop", chart=app)
        # The dependency's own Deployment, Service and PDB are off; its ConfigMap is there.
        deployments = [d for d in docs if d["kind"] == "Deployment"]
        assert [d["metadata"]["name"] for d in deployments] == ["shop-web"]
        assert find(docs, "ConfigMap", "shop-llm-sidecar-config")
        spec = deployments[0]["spec"]["template"]["spec"]
        where, sc = container(spec, "llm-sidecar")
        assert where == ("initContainers" if native else "containers")
        if not native:
            assert [c["name"] for c in spec["containers"]] == ["llm-sidecar", "web"]
        assert sc["image"] == "registry.example/llm-sidecar:0.1.0"
        _, web = container(spec, "web", "containers")
        env = env_of(web)
        assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:8080/openai/v1"
        assert env["SHOP_MODE"] == "prod", "the app's own env is kept"
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["llm-sidecar-config"]["configMap"]["name"] == "shop-llm-sidecar-config"
        assert "shop-data" in vols


# -- the schema refuses bad values, naming the problem -------------------------------

BAD_VALUES = [
    ({"config": {"providers": {"openai": {"kind": "openai", "base_url": "https://x", "timeout": {}}}}},
     "/config/providers/openai.*additional properties 'timeout'"),
    ({"config": {"server": {"grace_period": 30}}}, "/config/server/grace_period.*want string"),
    ({"config": {"routes": [{"match": {"path_prefix": "/x"}}]}}, "/config/routes/0.*provider"),
    ({"config": {"version": 2}}, "/config/version"),
    ({"config": {"listeners": {"reverse": "0.0.0.0:1"}}}, "/config.*'listeners'"),
    ({"image": {"tag": "latest"}}, "/image/tag"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest"),
    ({"ports": {"admin": 70000}}, "/ports/admin"),
    ({"ports": {"reverse": "8080"}}, "/ports/reverse.*want integer"),
    ({"nativeSidecar": "yes"}, "/nativeSidecar.*want boolean"),
    ({"secrets": {"mountPath": "relative/dir"}}, "/secrets/mountPath"),
    ({"appEnv": {"baseUrls": {"OPENAI BASE": "/x"}}}, "invalid propertyName 'OPENAI BASE'"),
    ({"replicas": 3}, "additional properties 'replicas'"),
    ({"autoscaling": {"enabled": "true"}}, "/autoscaling/enabled.*want boolean"),
    ({"autoscaling": {"minReplicas": 0}}, "/autoscaling/minReplicas"),
    ({"autoscaling": {"cpu": {"averageUtilization": 0}}}, "/autoscaling/cpu/averageUtilization"),
    ({"autoscaling": {"cpu": {"target": 70}}}, "/autoscaling/cpu.*additional properties 'target'"),
    ({"autoscaling": {"inFlightRequests": {"averageValue": "lots"}}}, "/autoscaling/inFlightRequests/averageValue"),
    ({"autoscaling": {"behaviour": {}}}, "/autoscaling.*additional properties 'behaviour'"),
]


@pytest.mark.parametrize("bad,message", BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_schema_rejects_bad_values(tmp_path, bad, message):
    from helm_python import HelmValuesError

    with pytest.raises(HelmValuesError) as e:
        render(bad)
    assert re.search(message, str(e.value)), str(e.value)
    # helm lint reports the same file as an error.
    import helm_python

    report = helm_python.lint(str(CHART), bad)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] == 3], report


# -- the config the chart ships is one the sidecar accepts --------------------------

def check_config(tmp_path, text, files=()):
    for path, content in files:
        p = pathlib.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(text)
    return subprocess.run([SIDECAR, "check", "-c", cfg], capture_output=True, text=True, timeout=30)


def sidecar_schema():
    return json.loads(subprocess.run([SIDECAR, "schema"], capture_output=True, text=True, check=True).stdout)


@pytest.mark.parametrize("switch", ["defaults", "classic", "https-genca"])
def test_llm_sidecar_check_accepts_the_rendered_config(tmp_path, switch):
    docs = render(SWITCHES[switch])
    text = rendered_config(docs)
    jsonschema.validate(yaml.safe_load(text), sidecar_schema())
    # The mounts, relocated under tmp_path the way the kubelet maps them into the container.
    keys = tmp_path / "keys"
    ca = tmp_path / "ca"
    text = text.replace("/var/run/secrets/llm-sidecar", str(keys)).replace("/var/run/llm-sidecar/ca", str(ca))
    files = [(keys / "openai-api-key", "sk-test-0123456789"), (keys / "anthropic-api-key", "sk-ant-0123456789")]
    if "https" in switch:
        secret = find(docs, "Secret", "demo-llm-sidecar-ca")
        files += [(ca / k, base64.b64decode(v).decode()) for k, v in secret["data"].items()]
    r = check_config(tmp_path, text, files)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 providers" in r.stdout and "warning" not in r.stderr, r.stdout + r.stderr


def test_without_the_keys_the_default_config_starts_with_providers_disabled(tmp_path):
    text = rendered_config(render()).replace("/var/run/secrets/llm-sidecar", str(tmp_path / "keys"))
    (tmp_path / "keys").mkdir()
    r = check_config(tmp_path, text)
    assert r.returncode == 0, r.stderr
    assert "providers.openai: disabled" in r.stderr and "openai-api-key" in r.stderr


def test_the_json_schema_accepts_every_shipped_config():
    schema = sidecar_schema()
    files = sorted((ROOT / "conf").rglob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        jsonschema.validate(yaml.safe_load(f.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"version": 1, "providers": {"x": {"kind": "openai"}}}, schema)
