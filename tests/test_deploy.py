"""deploy/: the Compose file and Kubernetes manifests validate offline and agree with each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def _check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_spec():
    r = _check_compose(DEPLOY / "compose.yaml")
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_check_can_fail(tmp_path):
    bad = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    bad["services"]["cpu-0"]["comand"] = ["cpu"]  # a typo in a key
    (tmp_path / "compose.yaml").write_text(yaml.safe_dump(bad))
    assert _check_compose(tmp_path / "compose.yaml").returncode != 0


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path):
    import kubernetes_validate
    for doc in _docs(path):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kubernetes_validation_can_fail():
    import kubernetes_validate
    job = next(d for d in _docs(DEPLOY / "kubernetes" / "cpus.yaml") if d["kind"] == "Job")
    job["spec"]["completionMode"] = "Sorted"
    job["spec"]["template"]["spec"]["containers"][0]["argz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, kubernetes_validate.latest_version(), strict=True)


def _arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def _cpus(args: list[str]) -> int:
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    return int(next(s.split("=")[1] for s in sets if s.startswith("machine.cpus=")))


def test_manifests_agree_on_cpus_and_address():
    sts = next(d for d in _docs(DEPLOY / "kubernetes" / "coordinator.yaml") if d["kind"] == "StatefulSet")
    svc = next(d for d in _docs(DEPLOY / "kubernetes" / "coordinator.yaml") if d["kind"] == "Service")
    job = next(d for d in _docs(DEPLOY / "kubernetes" / "cpus.yaml") if d["kind"] == "Job")
    coord_args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    cpu_args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["replicas"] == 1
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == _cpus(coord_args)
    port = svc["spec"]["ports"][0]["port"]
    assert _arg(coord_args, "--listen").endswith(f":{port}")
    assert _arg(cpu_args, "--coordinator") == (
        f"tcp://{sts['metadata']['name']}-0.{sts['spec']['serviceName']}:{port}")

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    ccmd = compose["services"]["coordinator"]["command"]
    cpus = {name: svc for name, svc in compose["services"].items() if name != "coordinator"}
    assert sorted(cpus) == sorted(f"cpu-{c}" for c in range(_cpus(ccmd)))
    for name, svc in cpus.items():  # each CPU its own id and key pair: a key joins as its own id only
        c = name.split("-")[1]
        assert _arg(svc["command"], "--cpu-id") == c
        assert compose["secrets"][svc["secrets"][0]]["file"].endswith(f"/cpu-{c}.key_secret")
        assert _arg(svc["command"], "--coordinator").endswith(_arg(ccmd, "--listen")[-5:])


def test_lost_cpus_come_back():
    """Issue 18, finding 13: a CPU pod or container that fails is restarted with the same index (so the
    same id and key), as often as the coordinator takes it back (--max-respawns), and never with --no-respawn."""
    from smpsim.engines.distributed.respawn import MAX_RESPAWNS
    sts = next(d for d in _docs(DEPLOY / "kubernetes" / "coordinator.yaml") if d["kind"] == "StatefulSet")
    job = next(d for d in _docs(DEPLOY / "kubernetes" / "cpus.yaml") if d["kind"] == "Job")
    assert "--no-respawn" not in sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "OnFailure"
    assert job["spec"]["backoffLimit"] >= MAX_RESPAWNS * job["spec"]["completions"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert "--no-respawn" not in compose["services"]["coordinator"]["command"]
    for name, svc in compose["services"].items():
        if name != "coordinator":
            assert svc["restart"] == f"on-failure:{MAX_RESPAWNS}"


def test_deploy_commands_are_real_commands(smpsim_cmd, subprocess_env):
    """The manifests' argument lists parse with this smpsim (a typo in a flag would fail here)."""
    sts = next(d for d in _docs(DEPLOY / "kubernetes" / "coordinator.yaml") if d["kind"] == "StatefulSet")
    job = next(d for d in _docs(DEPLOY / "kubernetes" / "cpus.yaml") if d["kind"] == "Job")
    for args in (sts["spec"]["template"]["spec"]["containers"][0]["args"],
                 job["spec"]["template"]["spec"]["containers"][0]["args"]):
        r = subprocess.run([*smpsim_cmd, *args, "--help"], capture_output=True, text=True, timeout=60,
                           env=subprocess_env)
        assert r.returncode == 0, r.stderr


def test_image_build_gets_what_the_compiled_install_needs():
    """The image's build stage, in an image with a C compiler, copies every file the package build reads
    (setup.py compiles the model); the slim runtime stage installs the wheel it built. Checked offline: no
    Docker daemon is needed."""
    stages: list[list[str]] = []
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            stages.append([line])
        elif stages:
            stages[-1].append(line)
    assert len(stages) == 2, "a build stage (with a C compiler) and a runtime stage"
    build, runtime = stages
    assert "slim" not in build[0] and "slim" in runtime[0]
    copied = {w for line in build if line.startswith("COPY ") for w in line.split()[1:-1]}
    for need in ("pyproject.toml", "setup.py", "README.md", "smpsim"):
        assert need in copied, f"the build stage does not copy {need}"
        assert (DEPLOY.parent / need).exists()
    assert any("pip wheel" in line for line in build)
    assert any(line.startswith("COPY --from=build /wheels") for line in runtime)
