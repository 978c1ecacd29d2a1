"""The README's demo figures are the rendering of the committed figures file, which
`tests/bench/readme_figures.py` generates from runs: no figure in that block is typed by hand."""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "bench"))

from readme_figures import FIGURES, README, readme_block, render  # noqa: E402


def test_readme_block_is_the_rendering_of_the_figures_file():
    figures = json.loads(FIGURES.read_text())
    assert readme_block(README.read_text()) == render(figures)


def test_figures_file_says_where_it_came_from():
    figures = json.loads(FIGURES.read_text())
    assert figures["command"].startswith("chatsmith run recipes/tiny-cpu.yaml --seeds") and len(figures["seeds"]) >= 3
    for row in figures["rows"]:
        assert set(row["per_seed"]) == {str(s) for s in figures["seeds"]}
