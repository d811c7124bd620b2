"""README.md is a landing page: short, its relative links resolve, and its first example runs as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import anndata as ad

from sctranslator.cli.entry import main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# [text](target) links; images too. Targets with a scheme (https:, mailto:) or only an anchor are not files.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_stays_a_landing_page() -> None:
    assert len(README.read_text().split()) <= 1500  # what `wc -w README.md` counts


def test_every_relative_link_in_readme_is_a_file_in_the_repository() -> None:
    targets = [t for t in _LINK.findall(README.read_text()) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]
    assert len(targets) >= 10  # the links into the documentation pages
    for target in targets:
        path = (ROOT / target.split("#")[0]).resolve()
        assert path.is_file() and ROOT in path.parents, f"README links to {target}, which is not a repository file"


def test_readme_first_example_runs_on_the_bundled_data(tmp_path: Path, monkeypatch) -> None:
    """The first bash example, from the repository root, as written (cells capped, output in tmp_path)."""
    block = re.search(r"```bash\n(.*?)```", README.read_text().split("## Three examples", 1)[1], re.S).group(1)
    words = shlex.split(block.replace("\\\n", " "), comments=True)
    assert words[0].endswith("sctranslator") and words[1] == "translate" and "demo" in words
    out = words[words.index("--out") + 1]
    monkeypatch.chdir(ROOT)
    words[words.index("--out") + 1] = str(tmp_path / out)
    assert main([*words[1:], "--max-cells", "16", "--quiet"]) == 0
    pred = ad.read_zarr(tmp_path / out)
    proteins = words[words.index("--proteins") + 1].split(",")
    assert pred.shape == (16, len(proteins)) and list(pred.var_names) == proteins
