"""Shared test set-up: caches in temporary folders, paths to the committed test data (tests/data)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports numba, matplotlib or onnxruntime: they cache on first use, by default under $HOME.
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "sctranslator-numba-cache"))
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="sctranslator-tests-"))
os.environ["MPLCONFIGDIR"] = str(_SESSION_TMP / "matplotlib")
# Libraries that cache under ~/.cache (onnxruntime >= 1.2x keeps a telemetry database there) use this.
os.environ["XDG_CACHE_HOME"] = str(_SESSION_TMP / "xdg-cache")
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# The ONNX export cache (default ~/.cache/sctranslator): tests never write into the user's.
os.environ["SCTRANSLATOR_CACHE"] = str(_SESSION_TMP / "sctranslator-cache")

import shutil  # noqa: E402

import pytest  # noqa: E402
from datafiles import DATASETS, FIXTURES, data_file  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fullsize: the full-size model (a minute, GBs of RAM); part of the suite")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The original implementation's reference fixtures (checkpoints trimmed; see tests/data/README.md)."""
    return data_file(FIXTURES)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Real paired RNA + protein datasets, cut to a few hundred cells."""
    return data_file(DATASETS)


@pytest.fixture(scope="session")
def s3_server():  # noqa: ANN201 - s3_server.S3Server
    """A real S3 API server (moto_server) on 127.0.0.1 for this session, with this process's AWS_* pointed at it.

    Subprocesses get the same endpoint through `s3_server.env`. See tests/s3_server.py.
    """
    from s3_server import S3Server, restore_environment, set_environment

    server = S3Server.start()
    previous = set_environment(server)
    try:
        yield server
    finally:
        restore_environment(previous)
        server.stop()
