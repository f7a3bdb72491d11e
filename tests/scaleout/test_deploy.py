"""Deployment as shipped: every kustomize overlay renders with ``kubectl kustomize`` and validates
against the Kubernetes schema (kubernetes-validate, strict) with the properties the README
promises; the install script the Dockerfile runs installs into a fresh directory, and the result
serves a request as an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from sluice.identity import generate
from support import IN_CI, free_port

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (ROOT / "deploy" / "kustomize" / "overlays").iterdir())


def _kustomize(overlay: Path) -> str:
    if shutil.which("kubectl"):
        cmd = ["kubectl", "kustomize", str(overlay)]
    elif shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(overlay)]
    else:
        if IN_CI:
            pytest.fail("kubectl (or kustomize) is required in CI to render deploy/kustomize")
        pytest.skip("neither kubectl nor kustomize is installed")
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_kustomize_overlay_renders_and_validates(overlay, tmp_path):
    rendered = _kustomize(ROOT / "deploy" / "kustomize" / "overlays" / overlay)
    out = tmp_path / f"{overlay}.yaml"
    out.write_text(rendered)
    validate = Path(sys.executable).with_name("kubernetes-validate")
    r = subprocess.run([str(validate), "--strict", "--quiet", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr

    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    kinds = {k for k, _ in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"} <= kinds
    pod = docs[("Deployment", "sluice")]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # the pepper and keys only from a Secret, the config only from a ConfigMap
    env = {e["name"]: e for e in c["env"]}
    for name in ("SLUICE_PEPPER", "SLUICE_ADMIN_KEY"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"].startswith("sluice-secrets")
    assert any("configMap" in v for v in pod["volumes"])
    # the control plane: its own Service, cluster-internal, reachable only from this namespace
    control = docs[("Service", "sluice-control")]["spec"]
    assert control.get("type", "ClusterIP") == "ClusterIP"
    assert docs[("Service", "sluice-data")]["spec"]["ports"][0]["targetPort"] == "data"
    policies = [d["spec"] for (k, _), d in docs.items() if k == "NetworkPolicy"]
    assert any(p["podSelector"] == {} and "ingress" not in p for p in policies), "a default deny"
    for p in policies:
        for rule in p.get("ingress", []):
            ports = {port["port"] for port in rule.get("ports", [])}
            if 8081 in ports:
                assert rule.get("from") and all(set(f) == {"podSelector"} for f in rule["from"]), \
                    "the control port admits only pods of its own namespace"
            elif 8080 not in ports:
                raise AssertionError(f"a policy admits ports {ports}")


def _python_for_nobody() -> str:
    """An interpreter an unprivileged user can run (the test's own may live under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        if Path(candidate).exists() and subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", candidate, "-c",
                 "import sys, venv; assert sys.version_info >= (3, 11)"], capture_output=True).returncode == 0:
            return candidate
    pytest.fail("no Python 3.11+ that the user nobody can run")


@pytest.mark.timeout(900)
def test_the_install_script_result_serves_a_request_as_an_unprivileged_user():
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        missing = "not root" if os.geteuid() != 0 else "no setpriv on PATH"
        if IN_CI:
            pytest.fail(f"root and setpriv are required in CI to drop to an unprivileged user: {missing}")
        pytest.skip(f"root and setpriv unavailable to drop to an unprivileged user: {missing}")
    base = Path(tempfile.mkdtemp(prefix="sluice-install-"))
    base.chmod(0o755)
    proc = None
    try:
        src = base / "src"  # what the Dockerfile copies into its build stage
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, src / name)
        shutil.copytree(ROOT / "sluice", src / "sluice", ignore=shutil.ignore_patterns("__pycache__"))
        r = subprocess.run(["sh", str(ROOT / "deploy" / "install.sh"), str(base / "app"), str(src)],
                           env={**os.environ, "PYTHON": _python_for_nobody()}, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        work = base / "work"
        work.mkdir()
        os.chown(work, 65534, 65534)
        key, port, admin, sim = generate("dev"), free_port(), free_port(), free_port()
        (work / "sluice.yaml").write_text(yaml.safe_dump({
            "data_plane": {"port": port}, "control_plane": {"port": admin},
            "store": {"url": f"sqlite:///{work}/sluice.db"}, "security": {"pepper": "install-test-pepper-0123456789"},
            "sim": {"port": sim}, "upstreams": [{"name": "sim", "base_url": f"http://127.0.0.1:{sim}/v1"}],
            "models": [{"name": "sim-small", "upstream": "sim"}],
            "identities": [{"name": "app", "owner": "o", "models": ["sim-small"], "keys": [key]}]}))
        log = open(work / "sluice.log", "wb")
        proc = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                 str(base / "app" / "bin" / "sluice"), "serve", "--config", str(work / "sluice.yaml")],
                                cwd=work, stdout=log, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", "HOME": str(work)})
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (work / "sluice.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (work / "sluice.log").read_text()
            time.sleep(0.1)
        uid = [line for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines() if line.startswith("Uid:")][0]
        assert uid.split()[1:3] == ["65534", "65534"], uid
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(base, ignore_errors=True)


def test_the_compose_trial_and_every_shipped_config_are_sound():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    sluices = [name for name, s in services.items() if s.get("image", "").startswith("sluice")]
    assert len(sluices) == 2 and {"postgres", "redis", "lb"} <= services.keys()
    for name in sluices:
        s = services[name]
        assert s["read_only"] is True and not s["user"].startswith("0")
        assert "ports" not in s, "replicas are reached only through the load balancer"
    assert services["lb"]["ports"] == ["8080:8080"]
    lb_cfg = (ROOT / "deploy" / "haproxy.cfg").read_text()
    assert "httpchk GET /readyz" in lb_cfg and all(f"{n}:8080 check" in lb_cfg for n in sluices)
    env = {**os.environ, "SLUICE_PEPPER": "compose-test-pepper-0123456789", "SLUICE_ADMIN_KEY": generate("prod", kind="admin"),
           "SLUICE_STORE_URL": "postgresql://sluice@postgres/sluice", "SLUICE_REDIS_URL": "redis://redis:6379/0"}
    configs = [ROOT / "deploy" / "compose-sluice.yaml", *sorted((ROOT / "deploy" / "kustomize").rglob("sluice.yaml"))]
    for cfg in configs:
        r = subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(cfg)], env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{cfg}: {r.stdout}{r.stderr}"
