"""Shared helpers for the deployment tests: render the Helm chart with the real Helm engine
(helm-python-sdk), pick objects out of the manifests, lay files out the way the kubelet
does, and run the sidecar and the mock provider on 127.0.0.1.

The binaries are the debug builds `cargo nextest run` leaves in target/debug (the test
script builds them first); LLM_SIDECAR_BIN_DIR points elsewhere.
"""
import contextlib
import copy
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With `CI` set (.ci/run sets it), a skipped test fails: pytest counts a skip as
    success, and a check CI skips is a check that never ran."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("CI"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which must run every test: {reason}"
CHART = ROOT / "helm" / "llm-sidecar"
BIN_DIR = pathlib.Path(os.environ.get("LLM_SIDECAR_BIN_DIR", ROOT / "target" / "debug"))
SIDECAR = BIN_DIR / "llm-sidecar"
MOCK = BIN_DIR / "llm-sidecar-mock"


def deep_merge(base, extra):
    """Helm's value merge: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(values=None, name="demo", namespace="apps", chart=CHART):
    """Renders the chart and returns its manifests as parsed documents."""
    from helm_python.chart import Chart

    c = Chart.load(str(chart))
    try:
        out = c.render(values or {}, name=name, namespace=namespace)
    finally:
        c.close()
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                d.setdefault("_template", path)
                docs.append(d)
    return docs


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def pod_spec(docs):
    return find(docs, "Deployment")["spec"]["template"]["spec"]


def container(spec, name, where=None):
    places = [where] if where else ["initContainers", "containers"]
    for p in places:
        for c in spec.get(p) or []:
            if c["name"] == name:
                return p, c
    raise AssertionError(f"no container {name} in {places}")


def env_of(c):
    return {e["name"]: e.get("value") for e in c.get("env") or []}


def rendered_config(docs):
    """The sidecar.yaml the chart's ConfigMap carries, as text."""
    cm = [d for d in docs if d["kind"] == "ConfigMap" and "sidecar.yaml" in d.get("data", {})]
    assert len(cm) == 1, "one ConfigMap with sidecar.yaml"
    return cm[0]["data"]["sidecar.yaml"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubelet_write(directory, files, generation):
    """Updates a ConfigMap/Secret volume the way the kubelet's atomic writer does: the
    files go into a new timestamped directory, `..data_tmp` is pointed at it and renamed
    over `..data`, each key is a symlink `key -> ..data/key`, and the old directory goes."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..2026_11_21_00_00_{generation:02d}.{1000 + generation}"
    stamp.mkdir()
    for key, content in files.items():
        (stamp / key).write_text(content)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    tmp = directory / "..data_tmp"
    os.symlink(stamp.name, tmp)
    os.rename(tmp, directory / "..data")
    for key in files:
        link = directory / key
        if not link.is_symlink():
            os.symlink(f"..data/{key}", link)
    if old:
        for f in (directory / old).iterdir():
            f.unlink()
        (directory / old).rmdir()


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def eventually(what, check, timeout=15.0, interval=0.1):
    """Polls `check` until it returns a truthy value; fails naming `what` after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = check()
            if v:
                return v
            last = v
        except Exception as e:  # noqa: BLE001 - reported below
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


def metric(admin, name, labels=None):
    """A sample's value from the sidecar's /metrics (0 when absent)."""
    _, text = http_get(f"http://{admin}/metrics")
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        if labels and not all(f'{k}="{v}"' in series for k, v in labels.items()):
            continue
        total += float(value)
    return total


class Proc:
    """A child process with its output in a file, stopped at the end of the test."""

    def __init__(self, args, log, env=None, **kw):
        self.log_path = log
        self.log = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env, **kw)

    def output(self):
        self.log.flush()
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self.log.close()
        return self.p.returncode


@pytest.fixture
def procs(tmp_path):
    started = []

    def start(args, name, env=None, **kw):
        p = Proc([str(a) for a in args], tmp_path / f"{name}.log", env=env, **kw)
        started.append(p)
        return p

    yield start
    for p in reversed(started):
        with contextlib.suppress(Exception):
            p.stop()


@pytest.fixture
def mock(procs):
    """The mock provider, recording the requests it gets. Returns its address."""
    port = free_port()
    procs([MOCK, "--listen", f"127.0.0.1:{port}", "--record", "500", "--interval", "1ms"], "mock")
    addr = f"127.0.0.1:{port}"
    eventually("the mock answers", lambda: http_get(f"http://{addr}/_mock/health")[0] == 200)
    return addr


def mock_requests(addr):
    _, body = http_get(f"http://{addr}/_mock/requests")
    return json.loads(body)


def header(req, name):
    for n, v in req["headers"]:
        if n == name:
            return v
    return None


def wait_ready(admin, proc=None, timeout=20):
    def ready():
        if proc is not None and proc.p.poll() is not None:
            raise AssertionError(f"the sidecar exited ({proc.p.returncode}):\n{proc.output()}")
        try:
            return http_get(f"http://{admin}/readyz")[0] == 200
        except (OSError, urllib.error.URLError):
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    raise AssertionError(f"the sidecar at {admin} is not ready after {timeout}s:\n{proc.output() if proc else ''}")
