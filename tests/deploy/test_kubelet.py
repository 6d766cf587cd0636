"""The chart's pod, run on 127.0.0.1 without a cluster: the rendered config and Secrets are
laid out the way the kubelet mounts them, the sidecar runs with the rendered container's
args and env, and the app side uses the rendered app env with the official openai SDK.
The kubelet's updates (the `..data` swap) are then simulated for the ConfigMap and the
Secret: the running sidecar picks up both, with no restart, and the provider sees the
new key."""
import base64
import os
import subprocess
import sys
import textwrap

from conftest import (
    SIDECAR,
    container,
    deep_merge,
    env_of,
    eventually,
    find,
    free_port,
    header,
    kubelet_write,
    metric,
    mock_requests,
    pod_spec,
    render,
    rendered_config,
    wait_ready,
)

KEY_ONE = "sk-rotation-canary-key-one-0001"
KEY_TWO = "sk-rotation-canary-key-two-0002"


def chart_values(tmp_path, mock, ports, extra=None):
    """Values a user would set, plus the mount paths moved under tmp_path (the kubelet maps
    the volumes to those paths inside the container)."""
    keys = tmp_path / "keys"
    v = {
        "ports": ports,
        "configMountPath": str(tmp_path / "config"),
        "secrets": {"mountPath": str(keys)},
        "config": {
            "log": {"level": "info,llm_sidecar=debug"},
            "providers": {
                "openai": {
                    "base_url": f"http://{mock}/v1",
                    "auth": {"type": "bearer", "token": f"${{file:{keys}/openai-api-key}}"},
                },
                "anthropic": None,
            },
            "routes": [
                {"match": {"path_prefix": "/openai/v1"}, "provider": "openai"},
                {"name": "openai-proxy", "match": {"host": "api.openai.com"}, "provider": "openai"},
            ],
            "server": {"reload_debounce": "100ms"},
        },
    }
    return deep_merge(v, extra) if extra else v


def loopback(config_text):
    """The admin listener binds 0.0.0.0 in the pod (for the kubelet's probes); the tests
    use loopback only."""
    assert "admin: 0.0.0.0:" in config_text
    return config_text.replace("admin: 0.0.0.0:", "admin: 127.0.0.1:")


def start_sidecar(procs, docs, tmp_path):
    """Runs the rendered sidecar container: its args, its env."""
    _, sc = container(pod_spec(docs), "llm-sidecar")
    env = {"PATH": os.environ["PATH"], **env_of(sc)}
    assert env["LLM_SIDECAR_CONFIG"] == str(tmp_path / "config" / "sidecar.yaml")
    return procs([SIDECAR, *sc["args"]], "sidecar", env=env)


def run_app(env, code):
    """Runs Python code as the app container would: with the env the chart gave it."""
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


CHAT = """
    import openai
    c = openai.OpenAI(max_retries=0, timeout=20)
    r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    print(r.choices[0].message.content)
"""


def test_configmap_update_and_key_rotation_apply_without_restart(tmp_path, procs, mock):
    ports = {"reverse": free_port(), "forward": free_port(), "admin": free_port()}
    admin = f"127.0.0.1:{ports['admin']}"
    docs = render(chart_values(tmp_path, mock, ports))
    kubelet_write(tmp_path / "keys", {"openai-api-key": KEY_ONE}, 1)
    kubelet_write(tmp_path / "config", {"sidecar.yaml": loopback(rendered_config(docs))}, 1)
    sidecar = start_sidecar(procs, docs, tmp_path)
    wait_ready(admin, sidecar)
    # The classic pattern's postStart hook, as the kubelet runs it: no --url, so the
    # admin address comes from the config file as the chart renders it (0.0.0.0:PORT,
    # read as loopback).
    classic = render(chart_values(tmp_path, mock, ports, {"nativeSidecar": False}))
    _, hooked = container(pod_spec(classic), "llm-sidecar", "containers")
    hook = hooked["lifecycle"]["postStart"]["exec"]["command"]
    as_rendered = tmp_path / "as-rendered.yaml"
    as_rendered.write_text(rendered_config(classic))
    assert f"admin: 0.0.0.0:{ports['admin']}" in as_rendered.read_text()
    r = subprocess.run([SIDECAR, *hook[1:]], env={"PATH": os.environ["PATH"], "LLM_SIDECAR_CONFIG": str(as_rendered)},
                       capture_output=True, text=True, timeout=70)
    assert r.returncode == 0 and r.stdout.strip() == f"http://{admin}/readyz: ready", r.stdout + r.stderr

    _, app = container(pod_spec(docs), "app", "containers")
    app_env = env_of(app)
    assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{ports['reverse']}/openai/v1"
    assert "mock response" in run_app(app_env, CHAT)
    last = mock_requests(mock)[-1]
    assert header(last, "authorization") == f"Bearer {KEY_ONE}", "the SDK's placeholder was replaced"
    assert header(last, "x-llm-sidecar-tenant") == "default"
    reloads = metric(admin, "llm_sidecar_config_reloads_total", {"result": "success"})

    # Secret rotation: the kubelet swaps ..data in the Secret's volume.
    kubelet_write(tmp_path / "keys", {"openai-api-key": KEY_TWO}, 2)

    def sees(key):
        run_app(app_env, CHAT)
        return header(mock_requests(mock)[-1], "authorization") == f"Bearer {key}"

    eventually("the provider sees the rotated key", lambda: sees(KEY_TWO), timeout=15, interval=0.3)

    # ConfigMap update (helm upgrade / kubectl edit): a new tenant header and id.
    docs2 = render(chart_values(tmp_path, mock, ports, {"config": {"tenant": {
        "id": "checkout", "headers": {"x-team": "payments"}}}}))
    kubelet_write(tmp_path / "config", {"sidecar.yaml": loopback(rendered_config(docs2))}, 2)

    def new_config():
        run_app(app_env, CHAT)
        last = mock_requests(mock)[-1]
        return header(last, "x-team") == "payments" and header(last, "x-llm-sidecar-tenant") == "checkout"

    eventually("the provider sees the new config's headers", new_config, timeout=15, interval=0.3)
    assert header(mock_requests(mock)[-1], "authorization") == f"Bearer {KEY_TWO}"

    # A broken ConfigMap is refused and the running config keeps serving.
    failures = metric(admin, "llm_sidecar_config_reloads_total", {"result": "failure"})
    kubelet_write(tmp_path / "config", {"sidecar.yaml": "version: 1\nproviders: {openai: {kind: nope}}\n"}, 3)
    eventually("the broken config is refused",
               lambda: metric(admin, "llm_sidecar_config_reloads_total", {"result": "failure"}) > failures)
    assert "mock response" in run_app(app_env, CHAT)
    assert header(mock_requests(mock)[-1], "x-team") == "payments"

    # One process all along, and every update was a reload.
    assert sidecar.p.poll() is None
    assert metric(admin, "llm_sidecar_config_reloads_total", {"result": "success"}) >= reloads + 2
    log = sidecar.output()
    for secret in (KEY_ONE, KEY_TWO):
        assert secret not in log, "a key reached the log"


def test_https_proxy_mode_with_the_charts_generated_ca(tmp_path, procs, mock):
    """httpsProxy + genCA: the trust-bundle init container's command, then the app's SDK
    with only HTTPS_PROXY and SSL_CERT_FILE from the chart, calling api.openai.com."""
    ports = {"reverse": free_port(), "forward": free_port(), "admin": free_port()}
    admin = f"127.0.0.1:{ports['admin']}"
    https = {"httpsProxy": {"enabled": True, "ca": {"genCA": True, "mountPath": str(tmp_path / "ca")},
                            "trustMountPath": str(tmp_path / "trust")}}
    docs = render(chart_values(tmp_path, mock, ports, https))
    secret = find(docs, "Secret", "demo-llm-sidecar-ca")
    kubelet_write(tmp_path / "ca", {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}, 1)
    kubelet_write(tmp_path / "keys", {"openai-api-key": KEY_ONE}, 1)
    kubelet_write(tmp_path / "config", {"sidecar.yaml": loopback(rendered_config(docs))}, 1)

    spec = pod_spec(docs)
    # The init containers in order: the trust bundle, then the sidecar.
    assert [c["name"] for c in spec["initContainers"]] == ["llm-sidecar-trust", "llm-sidecar"]
    trust = spec["initContainers"][0]
    (tmp_path / "trust").mkdir()
    r = subprocess.run([SIDECAR, *trust["args"]], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    bundle = (tmp_path / "trust" / "ca-bundle.pem").read_text()
    ca_pem = base64.b64decode(secret["data"]["ca.pem"]).decode()
    assert bundle.count("BEGIN CERTIFICATE") > 100 and ca_pem.strip() in bundle

    sidecar = start_sidecar(procs, docs, tmp_path)
    wait_ready(admin, sidecar)
    _, app = container(spec, "app", "containers")
    env = env_of(app)
    assert env["HTTPS_PROXY"] == f"http://127.0.0.1:{ports['forward']}"
    assert env["SSL_CERT_FILE"] == str(tmp_path / "trust" / "ca-bundle.pem")

    # An app that cannot change its base URL: the real host, through the proxy.
    no_base = {k: v for k, v in env.items() if not k.endswith("_BASE_URL")}
    assert "mock response" in run_app(no_base, CHAT)
    last = mock_requests(mock)[-1]
    assert header(last, "authorization") == f"Bearer {KEY_ONE}"
    assert metric(admin, "llm_sidecar_forward_requests_total", {"decision": "intercept"}) >= 1
    # The same env with the base URL: the reverse listener, bypassing the proxy (NO_PROXY).
    assert "mock response" in run_app(env, CHAT)

    # Without the bundle the app refuses the sidecar's certificate.
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHAT)],
        env={"PATH": os.environ["PATH"], **{k: v for k, v in no_base.items() if "CERT" not in k and "BUNDLE" not in k}},
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0 and ("certificate" in r.stderr.lower() or "ssl" in r.stderr.lower()), r.stderr
