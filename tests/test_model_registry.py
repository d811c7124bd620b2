"""Models by name: the bundled demo, converted bundles in the model home, paths always win."""

from __future__ import annotations

import json

import pytest
import torch

from sctranslator.errors import CheckpointError
from sctranslator.model import load_model, save_model
from sctranslator.model.registry import check_model_name, list_models, model_home, resolve_model


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SCTRANSLATOR_MODELS", str(tmp_path / "models"))
    return tmp_path / "models"


def test_demo_resolves_to_the_bundled_bundle(home) -> None:
    path = resolve_model("demo")
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    model = load_model("demo")
    assert model.panel["proteins"]["names"][:2] == ["CD127", "CD14"]
    assert model.source == str(path)


def test_a_path_wins_over_a_name(home, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()  # a user's own folder named like the bundled model
    assert resolve_model("demo") == tmp_path / "demo"
    with pytest.raises(CheckpointError, match="a model named 'demo' exists"):
        load_model("demo")


def test_converted_models_are_listed_with_their_sizes(home) -> None:
    demo = load_model("demo")
    save_model(demo, home / "my-model")
    (home / "notes").mkdir()  # not a bundle: ignored
    entries = {entry.name: entry for entry in list_models()}
    assert set(entries) == {"demo", "my-model"}
    mine = entries["my-model"]
    assert mine.origin == "converted" and mine.proteins_in_panel == 14
    assert mine.parameters == demo.n_parameters()
    assert mine.genes_in_panel == len(demo.panel["genes"]["token_ids"])
    loaded = load_model("my-model")
    for key, value in demo.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert json.dumps(mine.as_dict())  # serialisable for `models --json`


def test_unknown_name_lists_the_known_ones(home) -> None:
    with pytest.raises(CheckpointError, match=r"known: demo"):
        load_model("no-such-model")


def test_model_home_follows_xdg(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("SCTRANSLATOR_MODELS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert model_home() == tmp_path / "sctranslator" / "models"


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 65])
def test_bad_names_are_refused(bad) -> None:
    with pytest.raises(CheckpointError, match="not a valid model name"):
        check_model_name(bad)


def test_convert_by_name_then_models_lists_it(home, capsys) -> None:
    from datafiles import TINY_B

    from sctranslator.cli.entry import main

    assert main(["convert", str(TINY_B), "--name", "tiny-b"]) == 0
    assert "use it as --model tiny-b" in capsys.readouterr().out
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-b" in listing and "converted" in listing and "demo" in listing
    assert main(["models", "--json"]) == 0
    entries = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert entries["tiny-b"]["parameters"] == load_model("tiny-b").n_parameters()
    # A second conversion into the same name needs --overwrite; a bundled name is refused.
    assert main(["convert", str(TINY_B), "--name", "tiny-b"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["convert", str(TINY_B), "--name", "tiny-b", "--overwrite"]) == 0
    assert main(["convert", str(TINY_B), "--name", "demo"]) == 2
