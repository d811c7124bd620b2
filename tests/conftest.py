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
    config.addinivalue_line("markers", "fullsize: the full-size model (minutes, GBs of RAM); runs only with "
                            "SCTRANSLATOR_SLOW_TESTS=1, deselected otherwise")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Full-size tests are opt-in, like the GPU ones: deselected (and said so), not skipped."""
    if os.environ.get("SCTRANSLATOR_SLOW_TESTS") == "1":
        return
    fullsize = [item for item in items if item.get_closest_marker("fullsize")]
    if fullsize:
        config.hook.pytest_deselected(items=fullsize)
        items[:] = [item for item in items if not item.get_closest_marker("fullsize")]


def pytest_report_header(config: pytest.Config) -> str | None:
    if os.environ.get("SCTRANSLATOR_SLOW_TESTS") == "1":
        return None
    return "full-size model tests (marker fullsize) are deselected: set SCTRANSLATOR_SLOW_TESTS=1 to run them"


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
