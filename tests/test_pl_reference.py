"""docs/tile_language.md is the `pl` surface as the emulator runs it: current, complete, and
every name described."""

from __future__ import annotations

from pathlib import Path

from lowering.tile import budget, pl, reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "tile_language.md"


def test_doc_is_current():
    assert DOC.read_text() == reference.markdown(), (
        "docs/tile_language.md is stale: python -m lowering.tile.reference > docs/tile_language.md")


def test_every_reachable_name_is_listed_and_described():
    text = reference.markdown()
    names = reference.entries()
    for n in ("pl.matmul", "pl.at", "pl.spmd", "pl.tensor.sort32", "pl.tile.create",
              "pl.system.task_dummy", "pl.fillpad", "pl.jit", "pl.Out"):
        assert n in names
    for n in names:
        assert f"`{n}" in text, n
    assert "no description yet" not in text
    for n in ("matmul", "cast", "sort32", "create_tensor"):  # resolvable the way kernels do
        assert getattr(pl, n) is names[f"pl.{n}"]


def test_limits_table_is_the_budget_checks():
    text = reference.markdown()
    for plat, spaces in budget.LIMITS.items():
        for sp, b in spaces.items():
            assert f"| {sp} |" in text and f"{b // 1024} KiB" in text, (plat, sp)
