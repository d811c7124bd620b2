"""Make `tests/data/`, the small real test data the test suite reads, from the shared material.

    python scripts/make_test_data.py [--shared ../shared] [--out tests/data]
    python scripts/make_test_data.py --check     # regenerate into a temporary folder and compare

What is made (every input's sha256 and every output's sha256 go into `tests/data/manifest.json`):

* `datasets/`: `pbmc10k_cite_10x` cut to its first 1,000 cells (all 4,000 genes, all 14 proteins);
  `bmmc_cite_neurips2021` copied whole (600 cells; tests rely on its exact file layout);
  `pbmc_eccite_mimitou2019` cut to its first 20 cells (all 19,521 genes and 49 proteins).
* `reference_model/`: the original implementation's fixtures (`*_case.npz`, `preprocess_cases.npz`,
  `fixtures.json`) copied whole, and both official-format checkpoints *trimmed*: 97% of their bytes
  are two random (85,500 x dim) position-embedding tables (the gene vocabulary). The trimmed file
  keeps the original archive entry for entry (the same `data.pkl` byte for byte, every other
  storage byte for byte, stored uncompressed as torch writes them); in the two embedding storages
  the rows of tokens no test input can reach are zeroed and the entry is deflated. Kept rows: every
  token of the fixture cases, of the committed datasets' genes (symbols and Ensembl IDs), of their
  protein panels, of the curated protein names, and tokens 0..99 (tests use small literal ids).
  The reader is exercised on the original pickle layout; outputs on test inputs are unchanged.
* `vocab/`: row subsets of the raw identifier tables (same file names and formats), chosen so that
  every test in tests/test_vocab.py sees what it would see on the full tables: whole groups wherever
  a test looks for duplicates, and the scTranslator rows of every HGNC symbol kept.
"""

from __future__ import annotations

import argparse
import filecmp
import gzip
import hashlib
import io
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PBMC_CELLS = 1000
ECCITE_CELLS = 20
SMALL_TOKENS = 100
SEED = 0
CHECKPOINTS = ("tiny_a_official.pt", "tiny_b_official.pt")
FIXTURE_COPIES = ("fixtures.json", "tiny_a_case.npz", "tiny_b_case.npz", "preprocess_cases.npz")
VOCAB_TOKENS = "sctranslator_entrez_to_token.tsv.gz"
VOCAB_SYMBOLS = "sctranslator_human_symbol_to_entrez.tsv.gz"
VOCAB_MOUSE = "sctranslator_mouse_symbol_to_human_symbol.tsv.gz"
VOCAB_MOUSE_ENSEMBL = "sctranslator_mouse_ensembl_to_human_symbol.tsv.gz"
HGNC_2024 = "hgnc_complete_set_2024-10-18_full/hgnc_complete_set.txt.gz"
HGNC_2026 = "hgnc_complete_set_2026-06-20_subset/hgnc_complete_set.tsv.gz"
MGI_HOM = "mgi_mouse_human_orthology_2024-11-04/HOM_MouseHumanSequence.rpt.gz"
MGI_ALLIANCE = "mgi_mouse_human_orthology_2024-11-04/HGNC_AllianceHomology.rpt.gz"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- datasets


def write_datasets(shared: Path, out: Path) -> None:
    import anndata as ad

    data = shared / "data"
    for name, n_cells in (("pbmc10k_cite_10x", PBMC_CELLS), ("pbmc_eccite_mimitou2019", ECCITE_CELLS)):
        (out / name).mkdir(parents=True, exist_ok=True)
        for kind in ("rna", "protein"):
            adata = ad.read_h5ad(data / name / f"{kind}.h5ad")[:n_cells].copy()
            adata.uns["source_note"] = (f"{adata.uns.get('source_note', '')} -- first {n_cells} cells, "
                                        "cut by scripts/make_test_data.py").strip(" -")
            adata.write_h5ad(out / name / f"{kind}.h5ad", compression="gzip")
    (out / "bmmc_cite_neurips2021").mkdir(parents=True, exist_ok=True)
    for kind in ("rna", "protein"):
        shutil.copyfile(data / "bmmc_cite_neurips2021" / f"{kind}.h5ad", out / "bmmc_cite_neurips2021" / f"{kind}.h5ad")


# ---------------------------------------------------------------- checkpoints


def kept_tokens(fixtures: Path, datasets: Path) -> np.ndarray:
    """Every token a test input can reach: fixture cases, dataset genes and panels, curated names."""
    import anndata as ad

    from sctranslator.vocab import map_genes, map_proteins
    from sctranslator.vocab.proteins import curated_proteins

    tokens = [np.arange(SMALL_TOKENS)]
    for case in ("tiny_a_case.npz", "tiny_b_case.npz"):
        with np.load(fixtures / case) as arrays:
            tokens += [arrays["gene_ids"].ravel(), arrays["protein_ids"].ravel()]
    for name in ("pbmc10k_cite_10x", "bmmc_cite_neurips2021", "pbmc_eccite_mimitou2019"):
        rna = ad.read_h5ad(datasets / name / "rna.h5ad", backed="r")
        if name != "pbmc_eccite_mimitou2019":  # its 19,521 genes only feed the vocabulary tests
            tokens.append(map_genes(rna.var_names.to_numpy()).token_ids)
            if "gene_ids" in rna.var:
                tokens.append(map_genes(rna.var["gene_ids"].to_numpy()).token_ids)
        rna.file.close()
        protein = ad.read_h5ad(datasets / name / "protein.h5ad", backed="r")
        tokens.append(map_proteins(protein.var_names.to_numpy()).token_ids)
        protein.file.close()
    curated = curated_proteins()
    tokens.append(map_proteins([match.matched for match in curated.values()]).token_ids)
    genes = {gene for match in curated.values() for gene in (match.gene, *match.alternatives) if gene}
    tokens.append(map_genes(sorted(genes), id_type="symbol").token_ids)
    return np.unique(np.concatenate(tokens).astype(np.int64))


def trim_checkpoint(source: Path, target: Path, keep: np.ndarray) -> dict[str, object]:
    """Copy an official archive entry by entry, zeroing the embedding rows outside `keep`."""
    from sctranslator.model.official import load_official_checkpoint

    original = load_official_checkpoint(source)
    tables = {name: original.state_dict[name].numpy() for name in ("enc.pos_emb.weight", "dec.pos_emb.weight")}
    trimmed_entries = {}
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            raw = archive.read(info)
            matches = [name for name, table in tables.items() if len(raw) == table.nbytes
                       and np.array_equal(np.frombuffer(raw, dtype=np.float32).reshape(table.shape), table)]
            entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
            if matches:
                table = np.frombuffer(raw, dtype=np.float32).reshape(tables[matches[0]].shape).copy()
                drop = np.ones(table.shape[0], dtype=bool)
                drop[keep[keep < table.shape[0]]] = False
                table[drop] = 0
                entry.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(entry, table.tobytes(), compresslevel=9)
                trimmed_entries[info.filename] = {
                    "tensor": matches[0], "original_sha256": hashlib.sha256(raw).hexdigest(),
                    "rows": int(table.shape[0]), "rows_kept": int((~drop).sum())}
            else:
                entry.compress_type = zipfile.ZIP_STORED
                out.writestr(entry, raw)
    if len(trimmed_entries) != len(tables):
        raise SystemExit(f"{source}: expected the two embedding storages, found {sorted(trimmed_entries)}")
    verify_trimmed(original, load_official_checkpoint(target), keep)
    return trimmed_entries


def verify_trimmed(original, trimmed, keep: np.ndarray) -> None:
    """The trimmed checkpoint equals the original everywhere but the zeroed rows."""
    if trimmed.config != original.config or trimmed.dropped_keys != original.dropped_keys:
        raise SystemExit("trimmed checkpoint differs in configuration or dropped keys")
    if list(trimmed.state_dict) != list(original.state_dict):
        raise SystemExit("trimmed checkpoint differs in its keys")
    for name, tensor in original.state_dict.items():
        got = trimmed.state_dict[name]
        if name.endswith("pos_emb.weight"):
            rows = keep[keep < tensor.shape[0]]
            ok = np.array_equal(got[rows].numpy(), tensor[rows].numpy())
            others = np.setdiff1d(np.arange(tensor.shape[0]), rows)
            ok = ok and not got[others].any()
        else:
            ok = np.array_equal(got.numpy(), tensor.numpy())
        if not ok:
            raise SystemExit(f"trimmed checkpoint differs in {name}")


def write_reference_model(shared: Path, out: Path, datasets: Path) -> dict[str, object]:
    fixtures = shared / "fixtures" / "reference_model"
    out.mkdir(parents=True, exist_ok=True)
    for name in FIXTURE_COPIES:
        shutil.copyfile(fixtures / name, out / name)
    keep = kept_tokens(fixtures, datasets)
    return {name: trim_checkpoint(fixtures / name, out / name, keep) for name in CHECKPOINTS}


# ---------------------------------------------------------------- vocabulary tables


def read_table(path: Path) -> tuple[list[str], pd.DataFrame]:
    """The file's lines and its table; one line per row, so rows can be cut by line."""
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        lines = handle.read().splitlines(keepends=True)
    frame = pd.read_csv(io.StringIO("".join(lines)), sep="\t", dtype=str, keep_default_na=False,
                        index_col=False)
    if len(frame) != len(lines) - 1:
        raise SystemExit(f"{path}: {len(frame)} rows but {len(lines) - 1} lines; cannot cut by line")
    return lines, frame


def write_rows(lines: list[str], rows: pd.Index | np.ndarray, target: Path) -> None:
    """The header and the chosen rows, in file order, gzipped without a timestamp."""
    target.parent.mkdir(parents=True, exist_ok=True)
    chosen = np.unique(np.asarray(rows, dtype=np.int64))
    text = lines[0] + "".join(lines[i + 1] for i in chosen)
    with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
        handle.write(text.encode("utf-8"))


def sample(index: pd.Index, n: int, rng: np.random.Generator) -> pd.Index:
    return index if len(index) <= n else pd.Index(rng.choice(index.to_numpy(), n, replace=False))


def write_vocab(source: Path, out: Path, datasets: Path) -> dict[str, int]:
    import anndata as ad

    from sctranslator.vocab import map_proteins
    from sctranslator.vocab.proteins import curated_proteins

    rng = np.random.default_rng(SEED)
    lines, frames = {}, {}
    for name in (VOCAB_SYMBOLS, VOCAB_MOUSE, VOCAB_MOUSE_ENSEMBL, HGNC_2024, HGNC_2026, MGI_HOM, MGI_ALLIANCE):
        lines[name], frames[name] = read_table(source / name)
    tokens = pd.read_csv(source / VOCAB_TOKENS, sep="\t", dtype=str, keep_default_na=False)
    in_vocab = set(tokens["entrez_id"])
    sct, hgnc, hgnc26 = frames[VOCAB_SYMBOLS], frames[HGNC_2024], frames[HGNC_2026]
    mouse, mouse_ens, hom, alliance = (frames[VOCAB_MOUSE], frames[VOCAB_MOUSE_ENSEMBL], frames[MGI_HOM],
                                       frames[MGI_ALLIANCE])

    # HGNC 2024: symbols where scTranslator's table disagrees, every gene sharing an Ensembl ID,
    # a sample of clean protein-coding genes, and the genes of the panels and curated names.
    sct_entrez = dict(zip(sct["symbol"], sct["entrez_id"], strict=True))
    differ = hgnc.index[hgnc["symbol"].map(sct_entrez).fillna(hgnc["entrez_id"]) != hgnc["entrez_id"]]
    has_ensembl = hgnc["ensembl_gene_id"] != ""
    shared_ensembl = hgnc.index[has_ensembl & hgnc["ensembl_gene_id"].duplicated(keep=False)]
    usable = hgnc.index[(hgnc["locus_group"] == "protein-coding gene") & has_ensembl
                        & ~hgnc["ensembl_gene_id"].duplicated(keep=False) & hgnc["entrez_id"].isin(in_vocab)
                        & ~hgnc.index.isin(differ)]
    panel_genes = set()
    for name in ("pbmc10k_cite_10x", "bmmc_cite_neurips2021", "pbmc_eccite_mimitou2019"):
        protein = ad.read_h5ad(datasets / name / "protein.h5ad", backed="r")
        panel_genes |= {gene for gene in map_proteins(protein.var_names.to_numpy()).genes if gene}
        protein.file.close()
    for match in curated_proteins().values():
        panel_genes |= {gene for gene in (match.gene, *match.alternatives) if gene}
    hgnc_rows = differ.union(shared_ensembl).union(sample(usable, 800, rng))
    hgnc_rows = hgnc_rows.union(hgnc.index[hgnc["symbol"].isin(panel_genes)])

    # MGI homology: whole classes whose mouse symbols are each in exactly one pair; 150 classes of
    # genes scTranslator's mouse map lacks (the gaps the test looks for), 100 of genes it has.
    human = hom[hom["NCBI Taxon ID"] == "9606"]
    pairs = hom[hom["NCBI Taxon ID"] == "10090"].merge(human, on="DB Class Key", suffixes=("_m", "_h"))
    multi = set(pairs.loc[pairs["Symbol_m"].duplicated(keep=False), "DB Class Key"])
    clean = pairs[~pairs["DB Class Key"].isin(multi)]
    in_sct_mouse = clean["Symbol_m"].isin(mouse["mouse_symbol"])
    gaps = clean[~in_sct_mouse & clean["EntrezGene ID_h"].isin(in_vocab)]["DB Class Key"].drop_duplicates()
    covered = clean[in_sct_mouse]["DB Class Key"].drop_duplicates()
    classes = set(sample(pd.Index(gaps), 150, rng)) | set(sample(pd.Index(covered), 100, rng))
    hom_rows = hom.index[hom["DB Class Key"].isin(classes)]

    # MGI/Alliance: 150 single-HGNC rows that no scTranslator map covers, and 100 other rows.
    single = alliance.index[alliance["HGNC ID"].str.fullmatch(r"HGNC:\d+")
                            & alliance["Ensembl Gene ID"].str.startswith("ENSMUSG")
                            & ~alliance["Ensembl Gene ID"].isin(mouse_ens["mouse_ensembl_id"])
                            & ~alliance["Marker Symbol"].isin(mouse["mouse_symbol"])]
    alliance_rows = sample(single, 150, rng).union(sample(alliance.index.difference(single), 100, rng))
    chosen_alliance = alliance.loc[alliance_rows]
    hgnc_ids = set(chosen_alliance["HGNC ID"].str.split("|").explode())
    hgnc_rows = hgnc_rows.union(hgnc.index[hgnc["hgnc_id"].isin(hgnc_ids)])
    # Closure: every HGNC row sharing an Ensembl ID with a chosen one (ambiguity is per Ensembl ID).
    chosen_ensembl = set(hgnc.loc[hgnc_rows, "ensembl_gene_id"]) - {""}
    hgnc_rows = hgnc_rows.union(hgnc.index[hgnc["ensembl_gene_id"].isin(chosen_ensembl)])

    # scTranslator's maps: a sample, plus the rows of every chosen HGNC symbol and mouse gene.
    hgnc_symbols = set(hgnc.loc[hgnc_rows, "symbol"])
    sct_rows = sample(sct.index, 3000, rng).union(sct.index[sct["symbol"].isin(hgnc_symbols)])
    sct_rows = sct_rows.union(sct.index[sct["entrez_id"] == "920"])  # CD4 and its aliases
    mouse_symbols = set(hom.loc[hom_rows, "Symbol"]) | set(chosen_alliance["Marker Symbol"])
    mouse_rows = sample(mouse.index, 600, rng).union(mouse.index[mouse["mouse_symbol"].isin(mouse_symbols)])
    mouse_ens_rows = sample(mouse_ens.index, 600, rng).union(
        mouse_ens.index[mouse_ens["mouse_ensembl_id"].isin(set(chosen_alliance["Ensembl Gene ID"]))])

    # HGNC 2026: every symbol that is new against the full older tables, and 300 that are not.
    known_full = set(sct["symbol"]) | set(hgnc["symbol"])
    new = hgnc26.index[~hgnc26["symbol"].isin(known_full) & hgnc26["entrez_id"].isin(in_vocab)]
    known_subset = set(sct.loc[sct_rows, "symbol"]) | hgnc_symbols
    hgnc26_rows = new.union(sample(hgnc26.index[hgnc26["symbol"].isin(known_subset)], 300, rng))

    chosen = {VOCAB_SYMBOLS: sct_rows, VOCAB_MOUSE: mouse_rows, VOCAB_MOUSE_ENSEMBL: mouse_ens_rows,
              HGNC_2024: hgnc_rows, HGNC_2026: hgnc26_rows, MGI_HOM: hom_rows, MGI_ALLIANCE: alliance_rows}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / VOCAB_TOKENS, out / VOCAB_TOKENS)  # whole: token ids must stay 1..N
    for name, rows in chosen.items():
        write_rows(lines[name], rows, out / name)
    return {name: int(len(rows)) for name, rows in chosen.items()}


# ---------------------------------------------------------------- manifest, check

README = """# Test data

Small real data the test suite reads (tests/datafiles.py names the paths), made from the project's
shared material by `python scripts/make_test_data.py --shared PATH/TO/shared` and checked against it
with `--check`. Do not edit by hand: `manifest.json` records the sha256 of every input and output,
and tests/test_test_data.py fails when a file differs from it.

* `datasets/pbmc10k_cite_10x`: 10x CITE-seq PBMCs, the first 1,000 of 6,855 cells, all 4,000 genes
  and 14 proteins (raw counts).
* `datasets/bmmc_cite_neurips2021`: the NeurIPS 2021 CITE-seq bone-marrow starter set, whole
  (600 cells, 1,000 genes, 134 proteins).
* `datasets/pbmc_eccite_mimitou2019`: ECCITE-seq PBMCs, the first 20 of 500 cells, all 19,521 genes
  and 49 proteins.
* `reference_model/`: outputs of the original scTranslator code (`*_case.npz`, `preprocess_cases.npz`,
  `fixtures.json`, copied whole) and its two official-format checkpoints, trimmed (below).
* `vocab/`: row subsets of the raw identifier tables, same names and formats
  (`sctranslator_entrez_to_token.tsv.gz` whole).

The checkpoints are trimmed because 97% of their 16 MB are two random (85,500 x dim) position-
embedding tables. Each trimmed file is the original archive entry for entry: the same `data.pkl`
and the same bytes for every other tensor; in the two embedding tables the rows of tokens that no
test input reaches are zero (and those two entries are deflated). Kept rows: the fixture cases'
tokens, the genes and protein panels of the datasets above, the curated protein names, tokens 0-99.
So the reader sees the original pickle layout and every test input gives the original's outputs.
"""


def make(shared: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_datasets(shared, out / "datasets")
    checkpoints = write_reference_model(shared, out / "reference_model", out / "datasets")
    vocab_rows = write_vocab(shared / "vocab", out / "vocab", out / "datasets")
    inputs = [p for p in sorted((shared / "data").rglob("*.h5ad")) if "original" not in p.parts]
    inputs += sorted((shared / "fixtures" / "reference_model").iterdir()) + sorted((shared / "vocab").rglob("*.gz"))
    manifest = {
        "made_by": "scripts/make_test_data.py",
        "sources": {str(p.relative_to(shared)): sha256(p) for p in inputs if p.suffix != ".md"},
        "trimmed_checkpoints": checkpoints,
        "vocab_rows": vocab_rows,
        "files": {str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*"))
                  if p.is_file() and p.name not in ("manifest.json", "README.md")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (out / "README.md").write_text(README)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {total / 1e6:.2f} MB")


def check(shared: Path, out: Path) -> int:
    """Regenerate into a temporary folder; the committed files must come out the same."""
    import anndata as ad

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "data"
        make(shared, fresh)
        different = []
        for path in sorted(fresh.rglob("*")):
            if not path.is_file() or path.name == "manifest.json":
                continue
            committed = out / path.relative_to(fresh)
            if not committed.is_file():
                different.append(f"{committed} is missing")
            elif path.suffix == ".h5ad" and not filecmp.cmp(path, committed, shallow=False):
                a, b = ad.read_h5ad(path), ad.read_h5ad(committed)  # HDF5 bytes may differ between versions
                if not (a.obs.equals(b.obs) and a.var.equals(b.var) and (a.X != b.X).nnz == 0):
                    different.append(f"{committed} differs in content")
            elif path.suffix != ".h5ad" and not filecmp.cmp(path, committed, shallow=False):
                different.append(f"{committed} differs")
    print("\n".join(different) or f"{out} matches a fresh build from {shared}")
    return 1 if different else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--check", action="store_true", help="compare a fresh build with --out; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.shared, args.out)
    make(args.shared, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
