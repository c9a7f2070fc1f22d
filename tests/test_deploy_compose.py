"""minio-compose.yml read by a real Compose implementation (no daemon needed to parse).

``docker-compose config`` (Compose v1, Debian 12's docker-compose package) or ``docker
compose config`` (v2) validates the file against its schema and resolves it with
``deploy/env.example`` as the .env file. Skipped, with the reason, where neither is
installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "minio-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
#: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def _compose() -> list[str]:
    v1, docker = shutil.which("docker-compose"), shutil.which("docker")
    if v1:
        return [v1]
    if docker and subprocess.run([docker, "compose", "version"],
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    pytest.skip("no Compose implementation here (Debian: apt-get install docker-compose)")


def _config(env_file: Path) -> subprocess.CompletedProcess[str]:
    # only PATH and HOME from our environment: a variable set here must not hide a
    # missing one in the env file
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run([*_compose(), "--env-file", str(env_file), "-f", str(COMPOSE_FILE),
                           "config"], capture_output=True, text=True, env=env, timeout=120)


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip('"')
    return values


def test_compose_parses_the_file_with_env_example() -> None:
    done = _config(ENV_EXAMPLE)
    assert done.returncode == 0, done.stderr
    resolved: dict[str, Any] = yaml.safe_load(done.stdout)
    example = _env_example()
    services = resolved["services"]
    assert set(services) == {"minio", "minio-init", "forwarder"}
    minio_init = services["minio-init"]["environment"]
    # what env.example sets reaches the services, as set there
    assert services["minio"]["environment"]["MINIO_ROOT_USER"] == example["MINIO_ROOT_USER"]
    assert minio_init["GPU_CLIENTS"] == example["GPU_CLIENTS"]
    assert str(minio_init["AUDIT_RETENTION"]) == example["AUDIT_RETENTION"]
    assert services["forwarder"]["environment"]["AWS_SECRET_ACCESS_KEY"] == \
        example["FORWARDER_SECRET"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["forwarder"]["depends_on"]["minio-init"]["condition"] == \
        "service_completed_successfully"


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    done = _config(empty)
    assert done.returncode != 0
    assert "set MINIO_ROOT_USER in .env" in done.stderr, done.stderr


def test_every_variable_the_compose_file_uses_is_in_env_example() -> None:
    used = set(VARIABLE.findall(COMPOSE_FILE.read_text()))
    example = set(_env_example())
    assert used <= example, f"not in deploy/env.example: {sorted(used - example)}"
    # and env.example sets nothing that goes nowhere (Compose reads COMPOSE_* itself)
    unused = {v for v in example - used if not v.startswith("COMPOSE_")}
    assert not unused, f"set in deploy/env.example but never used: {sorted(unused)}"


def test_minio_init_gets_every_variable_its_script_reads() -> None:
    script = (ROOT / "deploy" / "minio-init.sh").read_text()
    assigned = set(re.findall(r"^\s*(?:for\s+)?([a-z_][a-z0-9_]*)(?:=|\s+in\s)", script,
                              re.MULTILINE))
    read = {name for name in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", script)
            if name not in assigned}
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    given = set(compose["services"]["minio-init"]["environment"])
    assert read <= given, f"minio-init.sh reads what compose never sets: {sorted(read - given)}"
