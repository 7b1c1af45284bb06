"""The command line as a newcomer meets it, on the bed: shell completion of the
cluster's namespaces and Services (issue 18), and ``kubectl ktpy`` as a kubectl
plugin run by the bed's own kubectl."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.e2e.conftest import Bed
from tests.e2e.testbed import config

ADMIN = str(config.KUBECONFIG_DIR / "admin.yaml")


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(config.REPO_ROOT),
        "KUBECONFIG": ADMIN,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        **extra,
    }


def complete(shell: str, words: str, cword: int | str) -> list[str]:
    """What ktpy answers the completion script of `shell` for the line `words`."""
    result = subprocess.run(
        [sys.executable, "-m", "ktpy"],
        env=_env(_KTPY_COMPLETE=f"{shell}_complete", COMP_WORDS=words, COMP_CWORD=str(cword)),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    if shell == "bash":  # "type,value" per line
        return [line.split(",", 1)[1] for line in result.stdout.splitlines() if line]
    if shell == "zsh":  # type, value, help: three lines each
        lines = result.stdout.splitlines()
        return lines[1::3]
    return [line.split("\t", 1)[0].split(",", 1)[-1] for line in result.stdout.splitlines()]


def test_completion_names_the_clusters_namespaces_and_services(bed: Bed, namespace: str) -> None:
    bed.kubectl("-n", namespace, "create", "service", "clusterip", "web", "--tcp=80:8080")
    bed.kubectl("-n", namespace, "create", "service", "clusterip", "api", "--tcp=80:8080")
    stem = namespace[:-3]

    # bash: -n before and after the command, a Service after -n given either way
    assert namespace in complete("bash", f"ktpy exchange -n {stem}", 3)
    assert complete("bash", f"ktpy -n {namespace} exchange w", 4) == ["web"]
    assert complete("bash", f"ktpy mesh -n {namespace} ", 4) == ["api", "web"]
    assert complete("bash", f"ktpy recover -n {namespace} svc/a", 4) == ["svc/api"]
    # zsh and fish speak their own formats over the same completion
    assert complete("zsh", f"ktpy exchange -n {namespace} w", 4) == ["web"]
    assert complete("fish", f"ktpy exchange -n {namespace} w", "w") == ["web"]
    # options; kt-connect's spellings stay out of the way
    assert complete("bash", "ktpy mesh --ver", 2) == ["--version-mark"]
    # a cluster it cannot reach completes nothing, at once and without a word
    unreachable = complete("bash", "ktpy exchange --kubeconfig /nonexistent -n kube", 5)
    assert unreachable == []


def test_the_bash_completion_script_completes_in_a_real_bash(bed: Bed, namespace: str) -> None:
    bed.kubectl("-n", namespace, "create", "service", "clusterip", "web", "--tcp=80:8080")
    script = f"""
        eval "$(_KTPY_COMPLETE=bash_source ktpy)"
        COMP_WORDS=(ktpy exchange -n {namespace} w)
        COMP_CWORD=4
        _ktpy_completion ktpy w exchange
        printf '%s\\n' "${{COMPREPLY[@]}}"
    """
    result = subprocess.run(
        ["bash", "-c", script], env=_env(), capture_output=True, text=True, timeout=30
    )
    assert result.stdout.split() == ["web"], result.stderr


def _plugin(bin_dir: Path, name: str = "kubectl-ktpy") -> Path:
    """A kubectl plugin script as pip makes it from its entry point in pyproject.toml."""
    scripts = tomllib.loads((config.REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts[name].split(":")
    plugin = bin_dir / name
    plugin.write_text(
        f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
    )
    plugin.chmod(0o755)
    return plugin


def test_kubectl_runs_ktpy_as_a_plugin(bed: Bed, namespace: str, tmp_path: Path) -> None:
    _plugin(tmp_path)
    kubectl = str(config.BIN_DIR / "kubectl")
    env = _env(PATH=f"{tmp_path}:{config.BIN_DIR}:{os.environ['PATH']}")

    listed = subprocess.run(
        [kubectl, "plugin", "list"], env=env, capture_output=True, text=True, timeout=30
    )
    assert str(tmp_path / "kubectl-ktpy") in listed.stdout, listed.stderr

    status = subprocess.run(
        [kubectl, "ktpy", "status", "-n", namespace],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == f"No ktpy sessions in namespace {namespace}."

    usage = subprocess.run(
        [kubectl, "ktpy", "exchange"], env=env, capture_output=True, text=True, timeout=60
    )
    assert usage.returncode == 2
    assert "Usage: kubectl ktpy exchange" in usage.stderr


def test_kubectl_completes_ktpy_through_its_completion_plugin(
    bed: Bed, namespace: str, tmp_path: Path
) -> None:
    bed.kubectl("-n", namespace, "create", "service", "clusterip", "web", "--tcp=80:8080")
    _plugin(tmp_path)
    _plugin(tmp_path, "kubectl_complete-ktpy")
    env = _env(PATH=f"{tmp_path}:{config.BIN_DIR}:{os.environ['PATH']}")

    def kubectl_complete(*words: str) -> list[str]:
        result = subprocess.run(
            [str(config.BIN_DIR / "kubectl"), "__complete", "ktpy", *words],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return result.stdout.splitlines()

    assert kubectl_complete("exchange", "-n", namespace, "w") == ["web", ":4"]
    assert kubectl_complete("ex")[0] == "exchange"
