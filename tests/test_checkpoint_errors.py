"""A damaged checkpoint says what is wrong with it: empty, truncated, corrupted, or legacy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sctranslator.errors import CheckpointError
from sctranslator.model import load_model


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.arange(50_000, dtype=torch.float32)}, path)
    return path


def test_truncated_file(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted") as info:
        load_model(saved)
    assert "legacy" not in str(info.value)


def test_corrupted_bytes_inside(saved: Path) -> None:
    data = bytearray(saved.read_bytes())
    middle = len(data) // 2  # inside the stored tensor data: the entry's CRC no longer matches
    data[middle:middle + 16] = bytes(16)
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(saved)


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_model(tmp_path / "empty.pt")


def test_legacy_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="pre-1.6 legacy"):
        load_model(path)
