"""Helpers shared by the data build tests (no tests of its own): a small recipe over
bundled sources and the small notes fixture, quick to build.

Imported as ``from data_support import ...``: pytest puts ``tests/`` on the path.
"""

from __future__ import annotations

from pathlib import Path

NOTES = str(Path(__file__).parent / "fixtures" / "notes_small")
RG = {
    "type": "reasoning_gym",
    "generators": ["gcd", "lcm", "simple_equations"],
    "per_generator": 12,
}


def small_recipe(root: Path, **overrides) -> dict:
    recipe = {
        "name": "small",
        "seed": 3,
        "run_root": str(root),
        "data": {
            "sft": {
                "split": "90/10",
                "sources": [
                    {**RG, "name": "rg_sft"},
                    {"type": "notes", "name": "notes_qa", "path": NOTES},
                ],
            },
            "prefs": {
                "split": {"train": 0.6, "val": 0.2, "test": 0.2},
                "sources": [
                    {"type": "champ", "name": "champ_pairs", "shape": "pair", "cap": 20},
                    {**RG, "name": "rg_pairs", "corrupt": "rules"},
                ],
            },
            "mcqa": {
                "split": {"train": 0.5, "val": 0.2, "test": 0.3},
                "sources": [
                    {**RG, "name": "rg_mcqa", "worked": False},
                    {"type": "notes", "name": "notes_mcqa", "path": NOTES},
                ],
            },
            "eval_sets": {
                "mmlu_physics": {
                    "sources": [
                        {
                            "type": "mmlu",
                            "name": "mmlu",
                            "subjects": ["college_physics"],
                            "count": 30,
                        }
                    ]
                }
            },
        },
    }
    recipe.update(overrides)
    return recipe
