"""Every figure keeps its text inside the canvas, with long names and many rows/columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from sctranslator.analysis import plots

LONG = "Mouse_IgG2a_kappa_isotype_Ctrl_TotalSeqB_0923"


def _matrix(rows: int, cols: int) -> pd.DataFrame:
    values = np.random.default_rng(0).normal(size=(rows, cols))
    return pd.DataFrame(values, index=[f"{LONG}_{i}" for i in range(rows)],
                        columns=[f"CD{i}-{LONG}" for i in range(cols)])


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (3, 40), (60, 14)])
def test_heatmap_text_fits(rows, cols, tmp_path) -> None:
    title = "pseudo-knockout effect of each gene on each protein, mean over 500 cells (knockout minus control)"
    figure = plots.heatmap_figure(_matrix(rows, cols), title=title,
                                  colorbar="mean change of the predicted protein (clr scale, knockout - control)",
                                  diverging=True)
    assert plots.texts_outside(figure) == []
    path = plots.save_heatmap(_matrix(rows, cols), tmp_path / "h.png", title=title, colorbar="score")
    assert path.stat().st_size > 1000


def test_a_clipped_figure_is_detected() -> None:
    figure = Figure(figsize=(2, 2))
    figure.subplots().set_title("a title far too long to fit on a two inch wide figure at this size", fontsize=14)
    assert plots.texts_outside(figure)  # the check itself must catch clipping


@pytest.mark.parametrize("n_proteins", [1, 12])
def test_scatter_and_bars_text_fits(n_proteins, tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    truth = rng.random((300, n_proteins))
    names = [f"{LONG[:20]}-{i}" for i in range(n_proteins)]
    captured: list[Figure] = []
    monkeypatch.setattr(plots, "_save", lambda figure, path, dpi=110: captured.append(figure) or path)
    plots.scatter_grid(tmp_path / "s.png", truth, [("model", truth + 0.1, [0.5] * n_proteins),
                                                   ("baseline", truth * 2, [None] * n_proteins)], names, scaling="clr")
    plots.correlation_bars(tmp_path / "b.png", names, [("model", [0.9] * n_proteins)], scaling="clr")
    for figure in captured:
        assert plots.texts_outside(figure) == []
        texts = " ".join(t.get_text() for t in figure.findobj(lambda a: hasattr(a, "get_text")))
        assert "clr" in texts  # every evaluation figure names the scaling


def test_top_genes_say_when_they_do_not_separate_genes() -> None:
    from sctranslator.analysis.attention.attention_output import minmax_columns_then_rows, top_genes

    genes = [f"G{i}" for i in range(6)]
    matrix = pd.DataFrame({"CD4": [6.0, 3.0, 2.0, 1.0, 1.0, 1.0],  # a clear winner
                           "CD8a": [1.0 + 1e-6 * i for i in range(6)]},  # scores tied to the sixth figure
                          index=genes)
    top = top_genes(matrix, minmax_columns_then_rows(matrix), top_k=3)
    cd4 = top[top["protein"] == "CD4"]
    assert list(cd4["gene"]) == ["G0", "G1", "G2"]
    assert cd4["fold_over_mean"].iloc[0] == pytest.approx(6.0 / (14.0 / 6))
    assert cd4["separates_genes"].all()
    assert not top.loc[top["protein"] == "CD8a", "separates_genes"].any()
