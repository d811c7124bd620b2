"""Make the small real-data subsets that tests/test_genemap.py reads (tests/data/genemap/).

    python scripts/make_genemap_test_data.py [--shared ../shared] [--cells 24]

* `pbmc10k_slice.h5ad`: the first `--cells` cells of pbmc10k_cite_10x (raw counts) and its real
  genes in their order from column 150 on, after columns 44-45 (PLA2G2C, UBXN10-AS1: two names
  scTranslator's table gives one token), chosen so that names only the extended mapping knows
  (upper-cased `C1ORF162`, clone names) fall within the first 64 mapped positions of the fixture
  checkpoints.
* `bmmc.h5ad`: the first `--cells` cells of bmmc_cite_neurips2021, all 1,000 genes, with
  var['gene_ids'] (Ensembl).
* `sctranslator_dicts.tsv`: scTranslator's own tables restricted to what these genes need, so a
  test can re-implement the original mapping with two plain dictionaries: rows
  (`symbol`, symbol, Entrez ID) and (`entrez`, Entrez ID, token id).
* `hgnc_bmmc.tsv`: HGNC 2024 current symbol and Entrez ID of each bmmc Ensembl ID.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "genemap"
PBMC_COLUMNS = np.r_[44:46, 150:4000]


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def subset(path: Path, cells: int, columns: slice | np.ndarray, keep_var: list[str]) -> ad.AnnData:
    full = ad.read_h5ad(path)
    part = full[:cells, columns]
    return ad.AnnData(X=sp.csr_matrix(part.X, dtype=np.float32), obs=pd.DataFrame(index=part.obs_names),
                      var=part.var[keep_var].copy())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--cells", type=int, default=24)
    args = parser.parse_args(argv)
    data, vocab = args.shared / "data", args.shared / "vocab"
    OUT.mkdir(parents=True, exist_ok=True)

    pbmc = subset(data / "pbmc10k_cite_10x" / "rna.h5ad", args.cells, PBMC_COLUMNS, [])
    bmmc = subset(data / "bmmc_cite_neurips2021" / "rna.h5ad", args.cells, slice(None), ["gene_ids"])
    pbmc.write_h5ad(OUT / "pbmc10k_slice.h5ad", compression="gzip")
    bmmc.write_h5ad(OUT / "bmmc.h5ad", compression="gzip")

    hgnc = read_tsv(vocab / "hgnc_complete_set_2024-10-18_full" / "hgnc_complete_set.txt.gz")
    hgnc = hgnc[hgnc["ensembl_gene_id"].isin(bmmc.var["gene_ids"])].drop_duplicates("ensembl_gene_id")
    hgnc[["ensembl_gene_id", "symbol", "entrez_id"]].sort_values("ensembl_gene_id").to_csv(
        OUT / "hgnc_bmmc.tsv", sep="\t", index=False)

    symbols = read_tsv(vocab / "sctranslator_human_symbol_to_entrez.tsv.gz")
    wanted = set(pbmc.var_names) | set(bmmc.var_names) | set(hgnc["symbol"]) | {"MT-CO2"}
    symbols = symbols[symbols["symbol"].isin(wanted)]
    tokens = read_tsv(vocab / "sctranslator_entrez_to_token.tsv.gz")
    tokens = tokens[tokens["entrez_id"].isin(set(symbols["entrez_id"]) | set(hgnc["entrez_id"]) | {"4513"})]
    table = pd.concat([pd.DataFrame({"table": "symbol", "key": symbols["symbol"], "value": symbols["entrez_id"]}),
                       pd.DataFrame({"table": "entrez", "key": tokens["entrez_id"], "value": tokens["token_id"]})])
    table.sort_values(["table", "key"]).to_csv(OUT / "sctranslator_dicts.tsv", sep="\t", index=False)
    for path in sorted(OUT.iterdir()):
        print(f"{path.relative_to(REPO)}: {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
