"""Shared helpers of the seed-recipe tests: the shipped recipes, resolved."""

from __future__ import annotations

from pathlib import Path

from tutorlm.pipeline.sweep import expand_variants
from tutorlm.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def recipe(name: str):
    return load_recipe(RECIPES / f"{name}.yaml")


def sources(section) -> dict:
    return {source.name: source for source in section.sources}


def variant(name: str, variant_name: str):
    return next(v for v in expand_variants(RECIPES / f"{name}.yaml")[1] if v.name == variant_name)
