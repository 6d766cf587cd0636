"""docs/kubernetes.md is checked where it can be without a cluster:

- every shell command that needs only `llm-sidecar`, `openssl` or `grep` is run, in
  order, in one working directory (`llm-sidecar` is the debug build);
- `helm template ... > sidecar.yaml` is done with the real Helm engine, so the
  `llm-sidecar check` after it checks what the chart renders;
- every values snippet marked `<!-- values -->` renders and lints cleanly, and the config
  it renders passes `llm-sidecar check`; snippets marked `<!-- values: llm-sidecar -->`
  go through a chart that depends on this one;
- the Deployment template shown for other charts is the one test_chart.py renders.
"""
import pathlib
import re
import shlex
import shutil
import subprocess

import yaml

from conftest import CHART, ROOT, SIDECAR, deep_merge, find, render, rendered_config

DOC = ROOT / "docs" / "kubernetes.md"
RUNNABLE = {"llm-sidecar", "openssl", "grep"}


def blocks(text):
    """(marker, language, body) for each fenced block; marker is the HTML comment right
    above it, if any."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.fullmatch(r"```(\w*)", lines[i].strip())
        if m:
            marker = lines[i - 1].strip() if i > 0 and lines[i - 1].startswith("<!--") else None
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((marker, m.group(1), "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


def commands(body):
    """Shell commands of a block: continuation lines and quoted newlines joined, comment
    lines dropped."""
    cmds, cur = [], ""
    for line in body.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line + "\n"
        text = cur.rstrip()
        if text.endswith("\\") or text.endswith("|"):
            continue
        try:
            shlex.split(text, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        cmds.append(text)
        cur = ""
    return cmds


def argv_of(cmd):
    return shlex.split(cmd.replace("\\\n", " "), comments=True)


DOC_TEXT = DOC.read_text()
BLOCKS = blocks(DOC_TEXT)


def my_values():
    """The doc's `my-values.yaml`."""
    for marker, lang, body in BLOCKS:
        if lang == "yaml" and body.startswith("# my-values.yaml"):
            return yaml.safe_load(body)
    raise AssertionError("no my-values.yaml snippet")


def test_commands_that_need_no_cluster(tmp_path):
    ran = []
    for _, lang, body in BLOCKS:
        if lang != "sh":
            continue
        for cmd in commands(body):
            argv = argv_of(cmd)
            word = argv[0]
            if word == "helm" and "--show-only templates/configmap.yaml" in cmd:
                # `helm template ... | yq ... > sidecar.yaml`, with the real Helm engine.
                out = argv[-1]
                assert argv[-2] == ">", cmd
                (tmp_path / out).write_text(rendered_config(render(my_values())))
                ran.append(cmd)
                continue
            if word not in RUNNABLE:
                assert word in {"kubectl", "helm", "docker", "curl"}, f"unexpected command in the doc: {cmd}"
                continue
            if argv[0] == "llm-sidecar":
                argv[0] = str(SIDECAR)
            r = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"{cmd}\n{r.stdout}{r.stderr}"
            ran.append(cmd)
            if argv[1:3] == ["ca", "init"]:
                assert "issued a new intermediate for: api.openai.com, api.anthropic.com" in r.stdout, r.stdout
            if argv[0] == "openssl":
                assert "Permitted" in r.stdout and "DNS:api.openai.com" in r.stdout, r.stdout
            if argv[0] == "grep":
                assert int(r.stdout) > 100, "the bundle holds the public roots and the CA"
            if "check" in argv:
                assert ": OK" in r.stdout, r.stdout
    assert len(ran) >= 5, ran
    ca = tmp_path / "llm-sidecar-ca"
    assert sorted(p.name for p in ca.iterdir()) == ["ca.pem", "intermediate.key", "intermediate.pem", "root.key"]


def relocated_check(tmp_path, text, ca_dir=None):
    """`llm-sidecar check` on a rendered config, with each ${file:...} key created under
    tmp_path (where the kubelet would mount the Secret) and the CA from `ca init`."""
    keys = tmp_path / "keys"
    keys.mkdir(exist_ok=True)
    text = text.replace("/var/run/secrets/llm-sidecar", str(keys))
    for ref in re.findall(r"\$\{file:([^}]+)\}", text):
        pathlib.Path(ref).write_text("sk-doc-test-0123456789\n")
    if ca_dir:
        text = text.replace("/var/run/llm-sidecar/ca", str(ca_dir))
    cfg = tmp_path / "sidecar.yaml"
    cfg.write_text(text)
    r = subprocess.run([SIDECAR, "check", "-c", cfg], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, text + r.stdout + r.stderr
    assert "warning" not in r.stderr, r.stderr
    return r


def test_values_snippets_render_lint_and_load(tmp_path):
    import helm_python

    subprocess.run([SIDECAR, "ca", "init", "--dir", tmp_path / "ca", "--domain", "api.openai.com",
                    "--domain", "api.anthropic.com"], check=True, capture_output=True)
    checked = 0
    for marker, lang, body in BLOCKS:
        if marker != "<!-- values -->":
            continue
        values = yaml.safe_load(body)
        report = helm_python.lint(str(CHART), values, strict=True)
        assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], (body, report)
        docs = render(values)
        relocated_check(tmp_path, rendered_config(docs), tmp_path / "ca")
        checked += 1
    assert checked >= 5


def test_the_dependency_snippets(tmp_path):
    app = tmp_path / "shop"
    shutil.copytree(ROOT / "tests/deploy/consumer", app)
    shutil.copytree(CHART, app / "charts/llm-sidecar")
    template = next(body for _, lang, body in BLOCKS if lang == "yaml" and body.startswith("{{- $sc"))
    assert (app / "templates/deployment.yaml").read_text().strip() == template.strip()
    deps = next(body for _, lang, body in BLOCKS if lang == "yaml" and body.startswith("dependencies:"))
    assert yaml.safe_load(deps)["dependencies"][0]["name"] == "llm-sidecar"
    for marker, lang, body in BLOCKS:
        if marker == "<!-- values: llm-sidecar -->":
            values = deep_merge({"image": "registry.example.com/shop:1"}, yaml.safe_load(body))
            docs = render(values, name="shop", chart=app)
            assert find(docs, "Deployment", "shop-web")
            text = rendered_config(docs)
            assert yaml.safe_load(text)["tenant"]["id"] == "shop"
            relocated_check(tmp_path, text)
