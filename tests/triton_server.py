"""Helpers for tests that run a real tritonserver (the nvidia-pytriton build, Python backend).

`require_tritonserver()` finds the binary, installing it with scripts/install_tritonserver.sh
when it is missing. Where it still cannot be had the test is skipped with the reason printed,
except under CI (CI=true), where a missing server is a failure: the Triton tests must run there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sctranslator.export.triton_server import TritonInstall, TritonServer, find_tritonserver

ROOT = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = ROOT / "scripts" / "install_tritonserver.sh"
READY_TIMEOUT_S = 120.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def _try_install() -> str:
    """Run the install script into this interpreter's virtualenv; returns its output for the skip reason."""
    if sys.prefix == sys.base_prefix:
        return "not running in a virtualenv, so the install script has nowhere to install"
    env = dict(os.environ, VENV=sys.prefix)
    try:
        done = subprocess.run(["bash", str(INSTALL_SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{INSTALL_SCRIPT} could not run: {exc}"
    return (done.stdout + done.stderr).strip()[-2000:]


def require_tritonserver() -> TritonInstall:
    """The tritonserver to test against; skip (fail under CI) when there is none even after installing."""
    install = find_tritonserver()
    if install is not None and (install.backend_dir is None or install.stub_env is not None):
        return install
    # No server, or a pytriton one installed before its stubs got their numpy<2 environment (BYTES inputs).
    output = _try_install()
    install = find_tritonserver()
    if install is not None:
        return install
    reason = f"no tritonserver binary, even after running {INSTALL_SCRIPT}: {output}"
    if _in_ci():
        pytest.fail(f"CI=true but {reason}", pytrace=False)
    print(f"SKIP: {reason}", file=sys.stderr)
    pytest.skip(reason)


@contextmanager
def running_server(repo: Path, **kwargs: object) -> Iterator[TritonServer]:
    """A tritonserver serving `repo` on free 127.0.0.1 ports, ready on entry and stopped on exit."""
    server = TritonServer(repo, install=require_tritonserver(), **kwargs)  # type: ignore[arg-type]
    server.start()
    try:
        server.wait_ready(READY_TIMEOUT_S)
        yield server
    finally:
        server.stop()
