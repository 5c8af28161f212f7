"""The tutorial notebooks run top to bottom (so a broken API breaks the suite) and are stored
without outputs. Each runs in a fresh kernel in a temporary folder; `pytest --nbmake notebooks/`
does the same without these checks."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# whole-notebook limits on 2 shared cores, kernel start included (measured: ~12 s, ~10 s, ~24 s with
# SmolLM2-135M cached, ~12 s with its stand-in); also each cell's timeout
BUDGET_S = {"01-phase-change": 60, "02-circuit": 60, "03-pretrained": 120, "04-induction-tl-demo": 60}


def _share_cached_weights() -> None:
    """Let 03-pretrained find SmolLM2's GGUF file if the user's cache has it: the suite's cache is
    private (tests/conftest.py), so link the file in rather than let the notebook use its stand-in."""
    from platformdirs import user_cache_dir

    from icl_lab.pretrained import BUILTINS

    for _, member, _ in BUILTINS.values():
        mine = Path(user_cache_dir("icl-lab")) / "models" / Path(member).name
        linked = Path(os.environ["ICL_LAB_CACHE"]) / "models" / mine.name
        if mine.is_file() and not linked.exists():
            linked.parent.mkdir(parents=True, exist_ok=True)
            linked.symlink_to(mine)


def test_every_notebook_is_budgeted():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(BUDGET_S)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code), f"{path.name} is stored with outputs"
    _share_cached_weights()
    start = time.perf_counter()
    client = nbclient.NotebookClient(nb, timeout=BUDGET_S[path.stem], kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    elapsed = time.perf_counter() - start
    assert all(o.get("output_type") != "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert elapsed < BUDGET_S[path.stem], f"{path.name} took {elapsed:.0f} s, over its {BUDGET_S[path.stem]} s budget"
