"""The committed test data (tests/data) is what scripts/make_test_data.py recorded, and still meaningful."""

from __future__ import annotations

import hashlib
import json
import zipfile

import anndata as ad
import numpy as np
import pytest
from datafiles import BMMC, FIXTURES, PBMC, ROOT, data_file

from sctranslator.model.official import load_official_checkpoint
from sctranslator.vocab import map_genes, map_proteins


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(data_file(ROOT / "manifest.json").read_text())


def test_every_file_is_the_one_the_script_made(manifest):
    files = manifest["files"]
    assert len(files) >= 15
    for relative, digest in files.items():
        assert hashlib.sha256(data_file(ROOT / relative).read_bytes()).hexdigest() == digest, relative
    # tests/data/genemap is made by its own script (scripts/make_genemap_test_data.py); compose/ holds
    # the Compose Specification's schema (its README says where it comes from).
    on_disk = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
               if p.is_file() and p.parts[len(ROOT.parts)] not in ("genemap", "compose")}
    assert on_disk - set(files) == {"manifest.json", "README.md"}


@pytest.mark.parametrize("name", ["tiny_a_official.pt", "tiny_b_official.pt"])
def test_trimmed_checkpoints_keep_the_original_layout(manifest, name):
    trimmed = manifest["trimmed_checkpoints"][name]
    with zipfile.ZipFile(data_file(FIXTURES / name)) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        # Only the two embedding storages were rewritten; everything else is stored as torch stores it.
        assert {n for n, i in infos.items() if i.compress_type != zipfile.ZIP_STORED} == set(trimmed)
        assert any(n.endswith("/data.pkl") for n in infos)
    state = load_official_checkpoint(FIXTURES / name).state_dict
    for entry in trimmed.values():
        table = state[entry["tensor"]].numpy()
        assert table.shape[0] == entry["rows"] == 85_500
        # Kept rows hold their (non-zero) values; token 0 is the padding row, zero in the original too.
        assert not table[0].any()
        assert int(np.any(table[1:] != 0, axis=1).sum()) == entry["rows_kept"] - 1


def test_every_token_the_test_data_reaches_has_its_original_embedding_row():
    """Trimming zeroed only rows no test input reaches: dataset genes, their panels, the fixture cases."""
    tokens = []
    for dataset in (PBMC, BMMC):
        rna = ad.read_h5ad(data_file(dataset / "rna.h5ad"), backed="r")
        tokens.append(map_genes(rna.var_names.to_numpy()).token_ids)
        rna.file.close()
        protein = ad.read_h5ad(data_file(dataset / "protein.h5ad"), backed="r")
        tokens.append(map_proteins(protein.var_names.to_numpy()).token_ids)
        protein.file.close()
    for case in ("tiny_a_case.npz", "tiny_b_case.npz"):
        with np.load(data_file(FIXTURES / case)) as arrays:
            tokens += [arrays["gene_ids"].ravel(), arrays["protein_ids"].ravel()]
    reached = np.unique(np.concatenate(tokens))
    reached = reached[reached > 0]
    assert reached.size > 1000
    for name in ("tiny_a_official.pt", "tiny_b_official.pt"):
        state = load_official_checkpoint(FIXTURES / name).state_dict
        for key in ("enc.pos_emb.weight", "dec.pos_emb.weight"):
            rows = state[key].numpy()[reached]
            assert np.all(np.any(rows != 0, axis=1)), f"{name} {key}: a reached token's row was zeroed"
