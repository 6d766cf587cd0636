"""The container image, without a Docker engine: docker/Dockerfile is linted for its
structure, the release binaries are built with the Dockerfile's own cargo command and
stripped with its own split-debug step, and they are shown to be small and to run from an
otherwise empty root as UID 65532 (a chroot holding only the binaries, the shared
libraries the distroless runtime image has, and the default config).
"""
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess

import pytest

from conftest import ROOT, eventually, free_port, http_get

DOCKERFILE = ROOT / "docker" / "Dockerfile"

# What gcr.io/distroless/cc-debian12 ships besides CA certificates and tzdata: glibc (with
# the dynamic loader) and libgcc. libstdc++ is there too, but nothing should need it.
RUNTIME_LIBS = {"libc.so.6", "libm.so.6", "libgcc_s.so.1", "libdl.so.2", "libpthread.so.0", "librt.so.1",
                "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1", "linux-vdso.so.1"}
RUNTIME_GLIBC = (2, 36)  # Debian 12


def instructions():
    """The Dockerfile as (instruction, arguments) pairs, continuation lines joined."""
    out, cur = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        cur = f"{cur} {s[:-1].strip()}" if s.endswith("\\") else f"{cur} {s}"
        if not s.endswith("\\"):
            word, _, rest = cur.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            cur = ""
    return out


def stages():
    """FROM lines with ARG defaults substituted: [(image, name, [instructions])]."""
    args, result = {}, []
    for word, rest in instructions():
        if word == "ARG" and not result:
            k, _, v = rest.partition("=")
            args[k] = v
        elif word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            image = re.sub(r"\$\{(\w+)\}", lambda g: args[g.group(1)], m.group(1))
            result.append((image, m.group(2), []))
        elif result:
            result[-1][2].append((word, rest))
    return result


def test_dockerfile_structure():
    st = stages()
    assert len(st) >= 2, "multi-stage: a builder and a runtime"
    for image, name, _ in st:
        assert name, f"every stage is named ({image})"
        if image == "scratch":
            continue
        assert ":latest" not in image and ":" in image.split("/")[-1], f"{image}: pin a version, never latest"
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert "@sha256:" in image or re.search(r"\d", tag + repo.split("/")[-1]), f"{image}: no version"
    builder, runtime = st[0], st[-1]
    assert "rust:1." in builder[0] and "bookworm" in builder[0]
    assert runtime[0].startswith("gcr.io/distroless/cc-debian12:nonroot")
    rt = runtime[2]
    users = [r for w, r in rt if w == "USER"]
    assert users == ["65532:65532"], "a numeric non-root user, so runAsNonRoot can check it"
    assert not [w for w, _ in rt if w == "HEALTHCHECK"], "Kubernetes probes, no HEALTHCHECK"
    exposed = {p for w, r in rt if w == "EXPOSE" for p in r.split()}
    assert exposed == {"8080", "3128", "9901"}
    copies = " ".join(r for w, r in rt if w == "COPY")
    assert "/src/target/release/llm-sidecar " in copies and "/src/target/release/llm-sidecar-mock" in copies
    assert "conf/container.yaml /etc/llm-sidecar/sidecar.yaml" in copies
    entry = [r for w, r in rt if w == "ENTRYPOINT"]
    assert entry == ['["/usr/local/bin/llm-sidecar"]'], "exec form, so signals reach the sidecar"
    # The dependency layer is built before the sources are copied in, with the vendored
    # (patched) crates Cargo.toml points at.
    words = builder[2]
    first_src = next(i for i, (w, r) in enumerate(words) if w == "COPY" and r.startswith("src"))
    first_build = next(i for i, (w, r) in enumerate(words) if w == "RUN" and "cargo build" in r)
    vendor = next(i for i, (w, r) in enumerate(words) if w == "COPY" and r.startswith("vendor"))
    assert vendor < first_build < first_src
    # The shipped binaries are the stripped ones; their symbols have a stage of their own.
    strip = next(i for i, (w, r) in enumerate(words) if w == "RUN" and "split-debug.sh" in r)
    assert strip > max(i for i, (w, r) in enumerate(words) if w == "RUN" and "cargo build" in r)
    symbols = [s for s in st if s[1] == "debug-symbols"]
    assert symbols and symbols[0][0] == "scratch"
    assert ".debug" in " ".join(r for w, r in symbols[0][2] if w == "COPY")
    for w, r in words:
        if "cargo build" in r:
            assert "--locked" in r and "--release" in r


def build_commands():
    """The builder stage's cargo commands, in order: the dependency layer, then the build."""
    runs = [r for w, r in stages()[0][2] if w == "RUN" and "cargo build" in r]
    assert len(runs) == 2
    return runs


def cargo_build_argv():
    cmd = build_commands()[-1].split("&&")[-1].strip()
    argv = shlex.split(cmd)
    assert argv[:2] == ["cargo", "build"], cmd
    return argv


def strip_command():
    """The builder stage's RUN that strips the binaries (docker/split-debug.sh)."""
    runs = [r for w, r in stages()[0][2] if w == "RUN" and "split-debug.sh" in r]
    assert len(runs) == 1
    return runs[0]


@pytest.fixture(scope="module")
def built_bins():
    """The Dockerfile's build command, run here: the same binaries with the same flags."""
    argv = cargo_build_argv()
    env = {**os.environ, "CARGO_TERM_COLOR": "never"}
    r = subprocess.run(argv, cwd=ROOT, env=env, timeout=45 * 60)
    assert r.returncode == 0, f"{' '.join(argv)} failed"
    bins = [ROOT / "target/release/llm-sidecar", ROOT / "target/release/llm-sidecar-mock"]
    for b in bins:
        assert b.exists(), b
    return bins


@pytest.fixture(scope="module")
def release_bins(built_bins, tmp_path_factory):
    """What the image ships: copies of the built binaries, stripped by the Dockerfile's own
    strip step (run on copies, so target/ keeps the unstripped ones for profiling)."""
    work = tmp_path_factory.mktemp("image")
    (work / "docker").mkdir()
    shutil.copy2(ROOT / "docker/split-debug.sh", work / "docker/split-debug.sh")
    (work / "target/release").mkdir(parents=True)
    for b in built_bins:
        shutil.copy2(b, work / "target/release" / b.name)
    r = subprocess.run(["sh", "-ec", strip_command()], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return [work / "target/release" / b.name for b in built_bins]


def sections(binary):
    """Every section's name, non-allocated ones (.symtab, DWARF) included."""
    out = subprocess.run(["readelf", "-SW", binary], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[\s*\d+\]\s+(\S+)", out))


# The stripped sidecar measured 20.4 MB (2026-12, Rust 1.95, thin LTO); the bound leaves
# room to grow but fails on an unstripped binary (about 100 MB).
MAX_SHIPPED_BYTES = 40 << 20


def test_the_image_ships_stripped_binaries_with_their_symbols_apart(built_bins, release_bins):
    for built, shipped in zip(built_bins, release_bins):
        size = shipped.stat().st_size
        assert size <= MAX_SHIPPED_BYTES, f"{shipped.name}: {size} bytes shipped"
        assert size < built.stat().st_size / 2, f"{shipped.name}: not stripped"
        sec = sections(shipped)
        # .debug_gdb_scripts is loaded with the program (rustc's pretty-printer hint), not DWARF.
        dwarf = {s for s in sec if s.startswith(".debug") and s != ".debug_gdb_scripts"}
        assert not dwarf, f"{shipped.name} keeps {sorted(dwarf)}"
        assert ".symtab" not in sec and ".gnu_debuglink" in sec, sorted(sec)
        debug = shipped.with_name(shipped.name + ".debug")
        dsec = sections(debug)
        assert {".debug_line", ".symtab"} <= dsec, f"{debug.name}: {sorted(dsec)}"
        link = subprocess.run(["objcopy", "--dump-section", ".gnu_debuglink=/dev/stdout", shipped],
                              capture_output=True, check=True).stdout
        assert link.split(b"\0")[0] == debug.name.encode(), link
        # The stripped binary still runs.
        r = subprocess.run([shipped, "--version"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def test_dependency_layer_builds_from_the_manifest_alone(tmp_path, built_bins):
    """The dependency layer's RUN, in a directory with only Cargo.toml and Cargo.lock, as
    in the image. It reuses the release build's dependencies, so it only builds the
    placeholder crate; it fails if a target the manifest declares has no placeholder."""
    for f in ("Cargo.toml", "Cargo.lock"):
        shutil.copy(ROOT / f, tmp_path / f)
    shutil.copytree(ROOT / "vendor", tmp_path / "vendor")
    script = build_commands()[0]
    env = {**os.environ, "CARGO_TARGET_DIR": str(tmp_path / "target"), "CARGO_TERM_COLOR": "never"}
    # Share the dependencies already built (same profile, same lock file).
    shutil.copytree(ROOT / "target/release/deps", tmp_path / "target/release/deps", symlinks=True)
    shutil.copytree(ROOT / "target/release/build", tmp_path / "target/release/build", symlinks=True)
    shutil.copytree(ROOT / "target/release/.fingerprint", tmp_path / "target/release/.fingerprint", symlinks=True)
    r = subprocess.run(["sh", "-ec", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30 * 60)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "src").exists(), "the placeholders are removed"


def needed_libs(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = set()
    for line in out.splitlines():
        name = line.strip().split()[0]
        libs.add(pathlib.Path(name).name)
    return out, libs


def test_binaries_need_only_what_the_runtime_image_has(release_bins):
    for b in release_bins:
        out, libs = needed_libs(b)
        assert libs <= RUNTIME_LIBS, f"{b.name} needs {sorted(libs - RUNTIME_LIBS)}:\n{out}"
        syms = subprocess.run(["objdump", "-T", b], capture_output=True, text=True, check=True).stdout
        versions = {tuple(int(x) for x in v.split(".")) for v in re.findall(r"GLIBC_(\d+\.\d+(?:\.\d+)?)", syms)}
        assert max(versions)[:2] <= RUNTIME_GLIBC, f"{b.name} needs glibc {max(versions)}"


def make_root(tmp_path, bins):
    """An otherwise empty root: the binaries, their libraries, the image's config."""
    root = tmp_path / "root"
    for b in bins:
        dest = root / "usr/local/bin" / b.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(b, dest)
        out, _ = needed_libs(b)
        for line in out.splitlines():
            path = next((p for p in line.split() if p.startswith("/")), None)
            if path:
                target = root / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(path), target)
    cfg = root / "etc/llm-sidecar/sidecar.yaml"
    cfg.parent.mkdir(parents=True)
    ports = {"reverse": free_port(), "admin": free_port()}
    # conf/container.yaml listens on 0.0.0.0; the test uses loopback.
    text = (ROOT / "conf/container.yaml").read_text()
    assert "reverse: 0.0.0.0:8080" in text and "admin: 0.0.0.0:9901" in text
    text = text.replace("0.0.0.0:8080", f"127.0.0.1:{ports['reverse']}").replace(
        "0.0.0.0:9901", f"127.0.0.1:{ports['admin']}")
    cfg.write_text(text)
    # Read-only, like readOnlyRootFilesystem: owned by root, not writable by UID 65532.
    for p in [root, *root.rglob("*")]:
        os.chown(p, 0, 0, follow_symlinks=False)
        if p.is_dir():
            p.chmod(0o555)
    return root, ports


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root (CI runs as root)")
def test_runs_from_an_empty_root_as_uid_65532(tmp_path, release_bins):
    root, ports = make_root(tmp_path, release_bins)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert len(files) <= 8, files
    binary = shutil.which("chroot")
    assert binary, "chroot (coreutils) is missing"
    chroot = [binary, "--userspec=65532:65532", str(root)]
    env = {"LLM_SIDECAR_CONFIG": "/etc/llm-sidecar/sidecar.yaml", "OPENAI_API_KEY": "sk-chroot-test-0000000"}
    r = subprocess.run(chroot + ["/usr/local/bin/llm-sidecar", "--version"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("llm-sidecar "), r.stderr
    r = subprocess.run(chroot + ["/usr/local/bin/llm-sidecar-mock", "--help"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(chroot + ["/usr/local/bin/llm-sidecar", "check"], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    # The image's entrypoint and command: run, until SIGTERM.
    log = open(tmp_path / "sidecar.log", "wb")
    p = subprocess.Popen(chroot + ["/usr/local/bin/llm-sidecar", "run"], env=env, stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        admin = f"127.0.0.1:{ports['admin']}"
        eventually("the chrooted sidecar is ready", lambda: p.poll() is None and http_get(f"http://{admin}/readyz")[0] == 200,
                   timeout=20)
        assert http_get(f"http://{admin}/healthz")[0] == 200
        status, metrics = http_get(f"http://{admin}/metrics")
        assert status == 200 and "llm_sidecar_uptime_seconds" in metrics
        # A route whose provider has no key answers a clear 503; the provider with a key is up.
        import urllib.error
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{ports['reverse']}/anthropic/v1/messages", data=b"{}",
                                     method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("expected 503")
        except urllib.error.HTTPError as e:
            assert e.code == 503 and e.headers["x-llm-sidecar-error"] == "provider_disabled"
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            code = p.wait(20)
        finally:
            log.close()
    out = (tmp_path / "sidecar.log").read_text()
    assert code == 0, out
    assert "sk-chroot-test" not in out
    # JSON logs, as the image's config asks.
    assert all(line.startswith("{") for line in out.strip().splitlines()), out[:500]
