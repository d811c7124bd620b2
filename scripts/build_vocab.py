"""Build the identifier tables shipped in `sctranslator/vocab/data/` from the raw public tables.

    python scripts/build_vocab.py [--source /work/shared/vocab] [--out sctranslator/vocab/data]
    python scripts/build_vocab.py --check   # rebuild into a temporary folder, compare with --out

Inputs (see the source folder's README): scTranslator's own maps (entrez -> token, human symbol ->
entrez, mouse symbol/Ensembl -> human symbol), the HGNC complete sets of 2024-10-18 (full) and
2026-06-20 (subset), and MGI's mouse-human orthology reports.

Every output table has one row per lookup key, already resolved by the priority rules below, so the
package only does exact (vectorised) look-ups at run time:

* each source gets a rank (lower wins); a key takes the genes of its best rank only;
* several genes at that best rank are a real ambiguity: one is chosen (in the model's vocabulary,
  then protein-coding, then same name as the key, then lowest HGNC/Entrez number) and the others are
  kept in `alternatives`;
* a key whose gene is known but has no model token keeps token 0, so that a lower-ranked source
  cannot remap it to some other gene and the report can say "not in the model's vocabulary".

The `original` gene mapping (published checkpoints) needs no priority rules: it looks symbols up
exactly in scTranslator's own table, and the tables `entrez_symbol`, `ensembl_symbol`,
`mouse_symbol_human` and `mouse_ensembl_human` only say which symbol an identifier stands for.

All tables go into one compressed `vocab_tables.npz` (numpy only, no pickles); `manifest.json`
beside it records the sha256 of every input and the row counts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from sctranslator.vocab.names import name_key  # noqa: E402  (the same key function as at run time)

HGNC_2024 = "hgnc_complete_set_2024-10-18_full/hgnc_complete_set.txt.gz"
HGNC_2026 = "hgnc_complete_set_2026-06-20_subset/hgnc_complete_set.tsv.gz"
MGI_HOM = "mgi_mouse_human_orthology_2024-11-04/HOM_MouseHumanSequence.rpt.gz"
MGI_ALLIANCE = "mgi_mouse_human_orthology_2024-11-04/HGNC_AllianceHomology.rpt.gz"
SCT_TOKENS = "sctranslator_entrez_to_token.tsv.gz"
SCT_SYMBOLS = "sctranslator_human_symbol_to_entrez.tsv.gz"
SCT_MOUSE_SYMBOLS = "sctranslator_mouse_symbol_to_human_symbol.tsv.gz"
SCT_MOUSE_ENSEMBL = "sctranslator_mouse_ensembl_to_human_symbol.tsv.gz"
TABLES_FILE = "vocab_tables.npz"
SOURCES = [SCT_TOKENS, SCT_SYMBOLS, SCT_MOUSE_SYMBOLS, SCT_MOUSE_ENSEMBL, HGNC_2024, HGNC_2026, MGI_HOM,
           MGI_ALLIANCE]


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def explode_multi(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per value of a '|'-separated HGNC/MGI field, empty values dropped."""
    out = frame.assign(key=frame[column].str.split("|")).explode("key")
    out["key"] = out["key"].str.strip()
    return out[out["key"] != ""]


def choose(candidates: pd.DataFrame) -> pd.DataFrame:
    """Resolve candidate rows (key, value, rank, source, preference columns) to one row per key."""
    frame = candidates.copy()
    frame["best_rank"] = frame.groupby("key")["rank"].transform("min")
    frame = frame[frame["rank"] == frame["best_rank"]]
    frame = frame.sort_values(["key", "not_in_vocab", "not_coding", "not_same_name", "tiebreak"],
                              kind="stable")
    frame = frame.drop_duplicates(["key", "value"])
    chosen = frame.drop_duplicates("key").set_index("key")
    others = frame[frame.duplicated("key") & frame["in_vocab"]]
    alternatives = others.groupby("key", sort=False)["value"].agg(lambda v: "|".join(map(str, v)))
    result = chosen[["value", "source"]].copy()
    result["alternatives"] = alternatives.reindex(result.index).fillna("")
    result = result.sort_values("source", key=lambda s: s.map(source_order(candidates)), kind="stable")
    return result.rename_axis("key").reset_index()


def source_order(candidates: pd.DataFrame) -> dict[str, int]:
    return candidates.groupby("source")["rank"].min().to_dict()


def candidate_frame(keys: pd.Series, values: pd.Series, *, rank: int, source: str, in_vocab: pd.Series,
                    coding: pd.Series | bool = True, same_name: pd.Series | bool = False,
                    tiebreak: pd.Series | int = 0) -> pd.DataFrame:
    frame = pd.DataFrame({"key": keys.to_numpy(), "value": values.to_numpy()})
    frame["rank"] = rank
    frame["source"] = source
    frame["in_vocab"] = np.asarray(in_vocab, dtype=bool)
    for column, series in (("not_in_vocab", ~frame["in_vocab"]), ("not_coding", ~np.asarray(coding)),
                           ("not_same_name", ~np.asarray(same_name))):
        frame[column] = np.broadcast_to(np.asarray(series, dtype=bool), len(frame))
    frame["tiebreak"] = np.broadcast_to(np.asarray(tiebreak, dtype=np.int64), len(frame))
    return frame[frame["key"] != ""]


class Sources:
    """The raw tables, read once, with the columns every builder needs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        tokens = read_tsv(root / SCT_TOKENS)
        self.token_of_entrez = pd.Series(tokens["token_id"].astype(np.int64).to_numpy(),
                                         index=tokens["entrez_id"].to_numpy())
        self.sct_symbols = read_tsv(root / SCT_SYMBOLS)
        self.sct_mouse_symbols = read_tsv(root / SCT_MOUSE_SYMBOLS)
        self.sct_mouse_ensembl = read_tsv(root / SCT_MOUSE_ENSEMBL)
        self.hgnc = {"2024": self._hgnc(root / HGNC_2024), "2026": self._hgnc(root / HGNC_2026)}
        self.hom = read_tsv(root / MGI_HOM)
        alliance = pd.read_csv(root / MGI_ALLIANCE, sep="\t", dtype=str, keep_default_na=False,
                               index_col=False)
        self.alliance = alliance.replace("null", "")

    def _hgnc(self, path: Path) -> pd.DataFrame:
        frame = read_tsv(path)
        frame["token"] = self.tokens_for(frame["entrez_id"])
        frame["coding"] = frame["locus_group"] == "protein-coding gene"
        frame["hgnc_number"] = frame["hgnc_id"].str.removeprefix("HGNC:").astype(np.int64)
        if "cd" not in frame:
            frame["cd"] = ""
        return frame

    def tokens_for(self, entrez: pd.Series) -> np.ndarray:
        return self.token_of_entrez.reindex(entrez.to_numpy()).fillna(0).astype(np.int64).to_numpy()

    def hgnc_by_id(self) -> pd.DataFrame:
        """HGNC ID -> token/symbol, the 2024 row where both releases have one."""
        both = pd.concat([self.hgnc["2024"], self.hgnc["2026"]]).drop_duplicates("hgnc_id")
        return both.set_index("hgnc_id")[["token", "symbol", "coding", "hgnc_number"]]


def hgnc_gene_candidates(sources: Sources, column: str, rank: int, source: str,
                         key_of=lambda s: s) -> list[pd.DataFrame]:
    """Candidates from one HGNC column, 2024 release at `rank`, 2026 release one rank lower."""
    pieces = []
    for offset, release in enumerate(("2024", "2026")):
        rows = explode_multi(sources.hgnc[release], column)
        pieces.append(candidate_frame(
            key_of(rows["key"]), pd.Series(rows["token"]), rank=rank + offset,
            source=source if release == "2024" else f"{source}_2026", in_vocab=rows["token"] > 0,
            coding=rows["coding"], same_name=rows["key"] == rows["symbol"], tiebreak=rows["hgnc_number"]))
    return pieces


def build_human_symbols(sources: Sources) -> pd.DataFrame:
    """Human symbol -> token. scTranslator's table first (the checkpoints' own choices), then HGNC:
    current symbol > previous symbol > alias, the 2024 full set before the 2026 set at each level."""
    sct = sources.sct_symbols
    sct_tokens = pd.Series(sources.tokens_for(sct["entrez_id"]))
    pieces = [candidate_frame(sct["symbol"], sct_tokens, rank=0, source="sctranslator", in_vocab=sct_tokens > 0)]
    for rank, (column, source) in enumerate(
            (("symbol", "hgnc_symbol"), ("prev_symbol", "hgnc_prev"), ("alias_symbol", "hgnc_alias"))):
        pieces += hgnc_gene_candidates(sources, column, 1 + 2 * rank, source)
    return choose(pd.concat(pieces, ignore_index=True))


def build_human_ensembl(sources: Sources) -> pd.DataFrame:
    """Human Ensembl gene ID (no version) -> token via HGNC's ensembl_gene_id."""
    return choose(pd.concat(hgnc_gene_candidates(sources, "ensembl_gene_id", 0, "hgnc_ensembl"),
                            ignore_index=True))


def via_human_symbol(keys: pd.Series, human_symbols: pd.Series, table: pd.DataFrame, *, rank: int,
                     source: str) -> pd.DataFrame:
    """Candidates for keys that name a human symbol, resolved through the human symbol table."""
    # A human symbol that the table does not know adds nothing (it must not block later sources).
    known = human_symbols.isin(table["key"]).to_numpy()
    keys, human_symbols = keys[known], human_symbols[known]
    tokens = table.set_index("key")["value"].reindex(human_symbols.to_numpy()).astype(np.int64)
    tokens = pd.Series(tokens.to_numpy())
    return candidate_frame(keys, tokens, rank=rank, source=source, in_vocab=tokens > 0)


def hom_pairs(sources: Sources) -> pd.DataFrame:
    """MGI homology classes as (mouse symbol, human symbol, human token) pairs."""
    hom = sources.hom
    mouse = hom[hom["NCBI Taxon ID"] == "10090"][["DB Class Key", "Symbol"]]
    human = hom[hom["NCBI Taxon ID"] == "9606"][["DB Class Key", "Symbol", "EntrezGene ID"]]
    pairs = mouse.merge(human, on="DB Class Key", suffixes=("_mouse", "_human"))
    pairs["token"] = sources.tokens_for(pairs["EntrezGene ID"])
    pairs["entrez"] = pd.to_numeric(pairs["EntrezGene ID"], errors="coerce").fillna(0).astype(np.int64)
    return pairs


def alliance_candidates(sources: Sources, key_column: str, rank: int, source: str) -> pd.DataFrame:
    """Mouse marker (symbol or Ensembl) -> human HGNC IDs -> token, from MGI's Alliance report."""
    rows = explode_multi(sources.alliance, "HGNC ID")
    rows = rows.rename(columns={"key": "hgnc_id"})
    rows = rows[rows[key_column] != ""].join(sources.hgnc_by_id(), on="hgnc_id", how="inner")
    return candidate_frame(rows[key_column], rows["token"], rank=rank, source=source,
                           in_vocab=rows["token"] > 0, coding=rows["coding"],
                           same_name=rows["symbol"] == rows["Marker Symbol"].str.upper(),
                           tiebreak=rows["hgnc_number"])


def build_mouse_symbols(sources: Sources, human_symbols: pd.DataFrame) -> pd.DataFrame:
    """Mouse symbol -> token: scTranslator's orthologue map, then MGI homology, then MGI/Alliance."""
    sct = sources.sct_mouse_symbols
    pairs = hom_pairs(sources)
    pieces = [
        via_human_symbol(sct["mouse_symbol"], sct["human_symbol"], human_symbols, rank=0,
                         source="sctranslator"),
        candidate_frame(pairs["Symbol_mouse"], pairs["token"], rank=1, source="mgi_homology",
                        in_vocab=pairs["token"] > 0,
                        same_name=pairs["Symbol_human"] == pairs["Symbol_mouse"].str.upper(),
                        tiebreak=pairs["entrez"]),
        alliance_candidates(sources, "Marker Symbol", 2, "mgi_alliance"),
    ]
    return choose(pd.concat(pieces, ignore_index=True))


def build_mouse_ensembl(sources: Sources, human_symbols: pd.DataFrame,
                        mouse_symbols: pd.DataFrame) -> pd.DataFrame:
    """Mouse Ensembl ID -> token: scTranslator's map, then MGI/Alliance, then via the marker's symbol."""
    sct = sources.sct_mouse_ensembl
    alliance = sources.alliance[(sources.alliance["Ensembl Gene ID"] != "")
                                & sources.alliance["Marker Symbol"].isin(mouse_symbols["key"])]
    by_symbol = mouse_symbols.set_index("key")["value"].reindex(alliance["Marker Symbol"].to_numpy())
    by_symbol = pd.Series(by_symbol.fillna(0).astype(np.int64).to_numpy())
    pieces = [
        via_human_symbol(sct["mouse_ensembl_id"], sct["human_symbol"], human_symbols, rank=0,
                         source="sctranslator"),
        alliance_candidates(sources, "Ensembl Gene ID", 1, "mgi_alliance"),
        candidate_frame(alliance["Ensembl Gene ID"], by_symbol, rank=2, source="mgi_symbol",
                        in_vocab=by_symbol > 0),
    ]
    return choose(pd.concat(pieces, ignore_index=True))


def build_tokens(sources: Sources) -> pd.DataFrame:
    """token -> Entrez ID and a unique display symbol (HGNC 2024, HGNC 2026, scTranslator's table)."""
    tokens = sources.token_of_entrez.rename_axis("entrez_id").rename("token_id").reset_index()
    tokens = tokens.sort_values("token_id").reset_index(drop=True)
    if not np.array_equal(tokens["token_id"].to_numpy(), np.arange(1, len(tokens) + 1)):
        raise SystemExit("token ids are not the contiguous range 1..N; the loader relies on it")
    labels = pd.Series("", index=tokens.index)
    tier = pd.Series(3, index=tokens.index)
    for rank, frame in enumerate((sources.hgnc["2024"], sources.hgnc["2026"], sources.sct_symbols)):
        by_entrez = frame[frame["entrez_id"] != ""].drop_duplicates("entrez_id").set_index("entrez_id")["symbol"]
        found = tokens["entrez_id"].map(by_entrez).fillna("")
        new = (labels == "") & (found != "")
        labels[new], tier[new] = found[new], rank
    # Labels name output columns, so they must be unique: a label already taken by a better-sourced
    # token (an old alias of a withdrawn Entrez ID) gives way to the Entrez ID itself.
    order = tier.sort_values(kind="stable").index
    taken = labels[order].duplicated(keep="first").reindex(tokens.index) | (labels == "")
    labels[taken] = "ENTREZ_" + tokens.loc[taken, "entrez_id"]
    tokens["symbol"] = labels
    tokens["entrez_id"] = tokens["entrez_id"].astype(np.int64)
    return tokens[["entrez_id", "symbol"]]


def symbol_rows(keys: pd.Series, symbols: pd.Series, source: str) -> pd.DataFrame:
    """(key, value = symbol, source, alternatives) rows, empty keys and symbols left out."""
    frame = pd.DataFrame({"key": keys.to_numpy(), "value": symbols.to_numpy(), "source": source,
                          "alternatives": ""})
    return frame[(frame["key"] != "") & (frame["value"] != "")]


def first_symbol_per_key(pieces: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per key, the first piece (best source) winning; other symbols of a key at the same
    source become its alternatives."""
    frame = pd.concat(pieces, ignore_index=True)
    best = frame.groupby("key", sort=False)["source"].transform("first")
    frame = frame[frame["source"] == best].drop_duplicates(["key", "value"])
    others = frame[frame.duplicated("key")].groupby("key", sort=False)["value"].agg("|".join)
    chosen = frame.drop_duplicates("key").set_index("key")
    chosen["alternatives"] = others.reindex(chosen.index).fillna("")
    return chosen.rename_axis("key").reset_index()[["key", "value", "source", "alternatives"]]


def build_current_symbols(sources: Sources) -> dict[str, pd.DataFrame]:
    """Tables of the `original` gene mapping: identifier -> the human symbol that is then looked up,
    exactly, in scTranslator's own symbol table.

    * `entrez_symbol`: Entrez ID -> HGNC's current symbol (2024 set, else 2026); an Entrez ID HGNC does
      not know -> the first symbol scTranslator's own table gives that Entrez ID (a name that leads
      back to it).
    * `ensembl_symbol`: human Ensembl gene ID -> HGNC's current symbol (2024 set, else 2026).
    * `mouse_symbol_human`, `mouse_ensembl_human`: scTranslator's own mouse maps, as they are.
    """
    entrez, ensembl = [], []
    for release in ("2024", "2026"):
        hgnc = sources.hgnc[release]
        source = "hgnc" if release == "2024" else "hgnc_2026"
        entrez.append(symbol_rows(hgnc["entrez_id"], hgnc["symbol"], source))
        ensembl.append(symbol_rows(hgnc["ensembl_gene_id"], hgnc["symbol"], source))
    sct = sources.sct_symbols
    entrez.append(symbol_rows(sct["entrez_id"], sct["symbol"], "sctranslator").drop_duplicates("key"))
    mouse_symbols, mouse_ensembl = sources.sct_mouse_symbols, sources.sct_mouse_ensembl
    return {
        "entrez_symbol": first_symbol_per_key(entrez),
        "ensembl_symbol": first_symbol_per_key(ensembl),
        "mouse_symbol_human": symbol_rows(mouse_symbols["mouse_symbol"], mouse_symbols["human_symbol"],
                                          "sctranslator").drop_duplicates("key").reset_index(drop=True),
        "mouse_ensembl_human": symbol_rows(mouse_ensembl["mouse_ensembl_id"], mouse_ensembl["human_symbol"],
                                           "sctranslator").drop_duplicates("key").reset_index(drop=True),
    }


def build_protein_names(sources: Sources) -> pd.DataFrame:
    """Marker name key -> HGNC symbol: CD designations > current > previous symbols > aliases."""
    pieces = []
    for rank, (column, source) in enumerate(
            (("cd", "hgnc_cd"), ("symbol", "hgnc_symbol"), ("prev_symbol", "hgnc_prev"),
             ("alias_symbol", "hgnc_alias"))):
        for offset, release in enumerate(("2024", "2026")):
            rows = explode_multi(sources.hgnc[release], column)
            keys = rows["key"].map(name_key)
            if column == "cd":
                # "CDw197" is also written "CD197" in panels.
                w_free = keys.str.replace(r"^CDW(?=\d)", "CD", regex=True)
                rows, keys = pd.concat([rows, rows]), pd.concat([keys, w_free])
            pieces.append(candidate_frame(
                keys, rows["symbol"], rank=2 * rank + offset,
                source=source if release == "2024" else f"{source}_2026", in_vocab=rows["token"] > 0,
                coding=rows["coding"], same_name=keys == rows["symbol"].map(name_key),
                tiebreak=rows["hgnc_number"]))
    return choose(pd.concat(pieces, ignore_index=True))


def column_arrays(table: str, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """npz members for one table: integers as int64, text as one '\\n'-joined UTF-8 buffer.

    Text is stored joined because numpy can only store Python strings as fixed-width or pickled
    arrays; one buffer keeps the file small and loads (bytes -> str.split) in milliseconds.
    """
    members = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_integer_dtype(values):
            members[f"{table}__{column}"] = values.to_numpy(dtype=np.int64)
            continue
        values = values.astype(str)
        if values.str.contains("\n", regex=False).any():
            raise SystemExit(f"{table}.{column} holds a newline; it cannot be stored joined")
        members[f"{table}__{column}__utf8"] = np.frombuffer("\n".join(values).encode("utf-8"), dtype=np.uint8)
    return members


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(source: Path, shipped: Path) -> int:
    """Rebuild from `source` into a temporary folder; every npz member must equal the shipped one.

    Compared member by member rather than byte for byte: another zlib may compress differently.
    """
    with tempfile.TemporaryDirectory() as tmp:
        main(["--source", str(source), "--out", tmp])
        with np.load(shipped / TABLES_FILE) as expected, np.load(Path(tmp) / TABLES_FILE) as rebuilt:
            different = sorted(set(expected.files) ^ set(rebuilt.files))
            different += [m for m in sorted(set(expected.files) & set(rebuilt.files))
                          if not np.array_equal(expected[m], rebuilt[m])]
    print("\n".join(f"differs: {m}" for m in different) or f"{shipped / TABLES_FILE} matches a rebuild from {source}")
    return 1 if different else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "vocab")
    parser.add_argument("--out", type=Path, default=REPO / "sctranslator" / "vocab" / "data")
    parser.add_argument("--check", action="store_true", help="rebuild into a temporary folder and compare with --out")
    args = parser.parse_args(argv)
    if args.check:
        return check(args.source, args.out)
    sources = Sources(args.source)

    tokens = build_tokens(sources)
    human_symbols = build_human_symbols(sources)
    mouse_symbols = build_mouse_symbols(sources, human_symbols)
    tables = {
        "tokens": tokens,
        "human_symbol": human_symbols,
        "human_ensembl": build_human_ensembl(sources),
        "mouse_symbol": mouse_symbols,
        "mouse_ensembl": build_mouse_ensembl(sources, human_symbols, mouse_symbols),
        "protein_name": build_protein_names(sources),
        **build_current_symbols(sources),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    members: dict[str, np.ndarray] = {}
    manifest = {"file": TABLES_FILE, "sources": {name: sha256(args.source / name) for name in SOURCES},
                "tables": {}}
    for name, frame in tables.items():
        members.update(column_arrays(name, frame))
        entry: dict[str, object] = {"rows": len(frame), "columns": list(frame.columns)}
        if "source" in frame:
            entry["rows_by_source"] = frame["source"].value_counts().sort_index().to_dict()
            entry["rows_without_gene_or_token"] = int(frame["value"].astype(str).isin(["0", ""]).sum())
            entry["rows_with_alternatives"] = int((frame["alternatives"] != "").sum())
        manifest["tables"][name] = entry
        print(f"{name}: {len(frame):,} rows")
    path = args.out / TABLES_FILE
    # numpy writes zip members with a fixed 1980 timestamp, so identical tables give identical bytes.
    np.savez_compressed(path, **members)
    manifest["bytes"] = path.stat().st_size
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
