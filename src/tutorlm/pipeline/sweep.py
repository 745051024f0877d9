"""``tutorlm sweep``: one recipe, a list of overrides, one results table.

Each variant is the whole recipe with a few values changed, run by
:func:`tutorlm.pipeline.runner.run_pipeline` in its own run directory
``runs/<name>-<variant>/``, so any variant can be inspected, re-run or served
alone. The variants come from the recipe's ``sweep:`` list, or from
``--set key=v1,v2`` on the command line (several ``--set`` make their product)::

    tutorlm sweep recipes/epfllama.yaml                        # beta 0.1 against 0.4
    tutorlm sweep recipes/zephyr.yaml --set train.sft.lr_scheduler_type=cosine,constant

Stages upstream of every changed value are shared, not recomputed: a variant
that differs from an earlier one only in DPO settings (``train.beta``,
``train.dpo.*``...) gets a copy of that variant's data, M1 and M0/M1 evaluations,
and its pipeline record says so. Which settings a stage depends on is the
stage's contract (:mod:`tutorlm.contract`), the same declaration that keys
``tutorlm run``'s cache. Copies, not links, keep every run directory
independent, so a later re-run of one variant never rewrites another's files.

The table (``runs/<name>-sweep/results.md`` and ``results.json``) has one row per
variant: its overrides, the last training and validation losses and reward
accuracies of SFT and DPO, and the headline metric of every evaluation task of
its final model (M2, else M1).
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tutorlm.contract import shareable
from tutorlm.errors import TutorlmError
from tutorlm.pipeline.runner import PipelineState, Stage, run_pipeline, stage_key
from tutorlm.recipe import (
    Recipe,
    RecipeError,
    SweepVariant,
    load_recipe,
    parse_yaml,
    read_recipe_text,
    recipe_from_dict,
    save_resolved,
    set_dotted,
)
from tutorlm.smoke import rename_run


class SweepError(TutorlmError):
    """A sweep that cannot be set up: bad ``--set``, unknown variant, invalid overrides."""


@dataclass
class Variant:
    """One variant, resolved: its name, what it changes, and the recipe it runs."""

    name: str
    overrides: dict[str, Any]
    recipe: Recipe
    description: str = ""


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: a row per variant and where the table is."""

    rows: list[dict] = field(default_factory=list)
    markdown: Path | None = None
    json: Path | None = None

    @property
    def failed(self) -> list[str]:
        return [row["variant"] for row in self.rows if row["status"] != "done"]


# -- variants ---------------------------------------------------------------------------


def parse_set(option: str) -> tuple[str, list[Any]]:
    """``key=v1,v2`` -> ``(key, [v1, v2])``; values are recipe YAML (``0.1``, ``5e-4``,
    ``cosine``, ``[1, 2]``), read by the recipe's own reader.

    Raises:
        SweepError: no ``=``, or no value.
    """
    key, sep, values = option.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SweepError(f"--set {option!r}: expected key=value1,value2,...")
    try:
        parsed = parse_yaml(f"[{values}]")
    except ValueError as error:
        raise SweepError(f"--set {option!r}: values are not valid YAML: {error}") from None
    return key.strip(), parsed


def _slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def variants_from_sets(options: Sequence[str]) -> list[SweepVariant]:
    """The product of ``--set`` options as variants named ``<leaf><value>``
    (``--set train.beta=0.1,0.4`` -> ``beta0.1``, ``beta0.4``)."""
    axes = [parse_set(option) for option in options]
    found = []
    for combo in itertools.product(*[[(key, v) for v in values] for key, values in axes]):
        name = "_".join(f"{key.rsplit('.', 1)[-1]}{_slug(value)}" for key, value in combo)
        found.append(SweepVariant(name=name, overrides=dict(combo)))
    return found


def _read(path: Path) -> tuple[dict, Recipe]:
    """The recipe file as written (a dict) and validated (its errors name file and key)."""
    recipe = load_recipe(path)
    return parse_yaml(read_recipe_text(path), origin=str(path)) or {}, recipe


def expand_variants(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    sets: Sequence[str] = (),
    only: Sequence[str] | None = None,
    smoke: bool = False,
) -> tuple[str, list[Variant]]:
    """Every variant of a sweep, validated before anything runs.

    Args:
        path: the recipe file.
        overrides: ``key=value`` applied to every variant (after the variant's own).
        sets: ``--set key=v1,v2`` options; when given they replace the recipe's list.
        only: run just the variants of these names.
        smoke: shrink every variant as ``tutorlm run --smoke`` does.

    Returns:
        The sweep's name (``<recipe name>``, ``-smoke`` appended in smoke mode) and
        the variants, in order.

    Raises:
        SweepError / RecipeError: no variants, an unknown name, an invalid override
            (named with the variant it belongs to).
    """
    path = Path(path)
    raw, base_recipe = _read(path)
    listed = variants_from_sets(sets) if sets else base_recipe.sweep
    if not listed:
        raise SweepError(f"{path}: no sweep variants; add a `sweep:` list or use --set key=v1,v2")
    names = [variant.name for variant in listed]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        raise SweepError(f"{path}: variant name {duplicate!r} is used twice")
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise SweepError(f"unknown variant(s) {unknown}; this sweep has: {', '.join(names)}")
    base = f"{raw['name']}-smoke" if smoke else raw["name"]
    resolved = []
    for variant in listed:
        if only and variant.name not in only:
            continue
        origin = f"{path} (variant {variant.name})"
        data = json.loads(json.dumps({k: v for k, v in raw.items() if k != "sweep"}))
        for key, value in variant.overrides.items():
            try:  # a copy of the value, so that variants never share a list
                set_dotted(data, key, json.loads(json.dumps(value)))
            except RecipeError as error:
                raise SweepError(f"{origin}: override {key!r}: {error}") from None
        extra: list[str] = []
        if smoke:
            from tutorlm.smoke import smoke_overrides

            shrunk = smoke_overrides(data)
            data, extra = shrunk["recipe"], shrunk["overrides"]
        data = rename_run(data, f"{base}-{variant.name}")
        recipe = recipe_from_dict(data, [*extra, *overrides], origin=origin)
        recipe.source_path = str(path)
        resolved.append(Variant(variant.name, variant.overrides, recipe, variant.description))
    return base, resolved


# -- sharing upstream stages ------------------------------------------------------------


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def differing_keys(donor: Recipe, recipe: Recipe) -> list[str]:
    """Dotted keys whose values differ between two variants (paths under each one's own
    run directory compared as if both had the same name)."""
    moved = rename_run(donor.to_dict(), recipe.name)
    mine = recipe.to_dict()
    left, right = _flatten(moved), _flatten(mine)
    skip = ("name", "description", "sweep")
    return sorted(
        key
        for key in set(left) | set(right)
        if left.get(key) != right.get(key) and key.split(".")[0] not in skip
    )


def shareable_stages(donor: Recipe, recipe: Recipe) -> list[str]:
    """The stages whose results ``recipe`` can take from ``donor``: by their contracts,
    neither their settings nor those of a stage upstream differ (paths under each
    variant's own run directory compared as if both had the same name)."""
    return shareable(rename_run(donor.to_dict(), recipe.name), recipe.to_dict())


def _inside_stage_folder(path: Path, run_dir: Path) -> bool:
    """A stage's output that lives in a folder of its own under the run directory (so
    that copying the folder copies that stage's work and nothing else)."""
    return path.is_relative_to(run_dir) and path.parent != run_dir


def share_stages(
    donor: Recipe, recipe: Recipe, stages: list[Stage], names: Sequence[str]
) -> list[str]:
    """Copy the donor's finished stages ``names`` into ``recipe``'s run directory and
    record them as done with ``recipe``'s keys, so the runner skips them.

    Stops at the first stage the donor has not finished (a later one could not
    rest on it). Returns the names copied.
    """
    donor_state = PipelineState.load(donor.layout)
    state = PipelineState.load(recipe.layout)
    copied = []
    for stage in stages:
        if stage.name not in names or not stage.enabled(donor):
            continue
        record = donor_state.stages.get(stage.name, {})
        if record.get("status") != "done":
            break
        key = stage_key(stage, recipe, state)
        outputs = [Path(p) for p in record.get("outputs", [])]
        if not all(_inside_stage_folder(p, donor.run_dir) for p in outputs):
            break
        mine = state.stages.get(stage.name, {})
        moved = [recipe.layout.relocate(p, donor.layout) for p in outputs]
        if (
            mine.get("status") == "done"
            and mine.get("key") == key
            and all(p.exists() for p in moved)
        ):
            continue
        for folder in sorted({p.parent for p in outputs}):
            target = recipe.layout.relocate(folder, donor.layout)
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(folder, target)
        state.stages[stage.name] = {
            **record,
            "key": key,
            "outputs": [str(p) for p in moved],
            "shared_from": donor.name,
        }
        copied.append(stage.name)
    state.save()
    return copied


# -- results ----------------------------------------------------------------------------


def _last(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row.get(key) is not None]
    return float(values[-1]) if values else None


def _headline(entry: dict) -> tuple[str, float | None]:
    """The one number a task is known by: accuracy, acc_norm, BLEU-4 or perplexity."""
    kind = entry.get("kind")
    if kind == "choice":
        return "acc_norm", (entry.get("accuracy_norm") or {}).get("value")
    if kind == "generation":
        return "BLEU-4", entry.get("bleu4")
    if kind == "perplexity":
        return "ppl", entry.get("value")
    return "acc", (entry.get("accuracy") or {}).get("value")


def variant_row(variant: Variant, status: str) -> dict:
    """One row of the table, read from the files the variant's stages wrote."""
    from tutorlm.report.plots import read_metrics

    layout = variant.recipe.layout
    run_dir = layout.run_dir
    sft = read_metrics(layout.metrics("sft"))
    dpo = read_metrics(layout.metrics("dpo"))
    row: dict[str, Any] = {
        "variant": variant.name,
        "run_dir": str(run_dir),
        "overrides": variant.overrides,
        "status": status,
        "sft_loss": _last(sft, "loss"),
        "sft_eval_loss": _last(sft, "eval_loss"),
        "dpo_loss": _last(dpo, "loss"),
        "dpo_eval_loss": _last(dpo, "eval_loss"),
        "dpo_train_reward_accuracy": _last(dpo, "rewards/accuracies"),
        "dpo_eval_reward_accuracy": _last(dpo, "eval_rewards/accuracies"),
        "model": None,
        "tasks": {},
    }
    for label in ("M2", "M1", "M0"):
        path = layout.eval_results(label)
        if path.is_file():
            results = json.loads(path.read_text())
            row["model"] = label
            for task, entry in results.get("tasks", {}).items():
                metric, value = _headline(entry)
                row["tasks"][f"{task} {metric}"] = value
            break
    return row


COLUMNS = (
    ("sft_loss", "SFT loss"),
    ("sft_eval_loss", "SFT val loss"),
    ("dpo_loss", "DPO loss"),
    ("dpo_eval_loss", "DPO val loss"),
    ("dpo_train_reward_accuracy", "DPO train reward acc."),
    ("dpo_eval_reward_accuracy", "DPO val reward acc."),
)
"""Training columns of the table (label after the row key); empty columns are left out."""


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def row_model(rows: list[dict]) -> str:
    """The label of the evaluated model shared by the rows (M2 normally)."""
    models = {row["model"] for row in rows if row["model"]}
    return models.pop() if len(models) == 1 else "final"


def results_markdown(title: str, rows: list[dict]) -> str:
    """The sweep table: variants as rows; overrides, training figures, eval metrics."""
    training = [(key, label) for key, label in COLUMNS if any(r.get(key) is not None for r in rows)]
    tasks = list(dict.fromkeys(task for row in rows for task in row["tasks"]))
    header = ["variant", "overrides", *[label for _, label in training]]
    header += [f"{row_model(rows)} {task}" for task in tasks] + ["status"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for row in rows:
        changed = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in row["overrides"].items()) or "–"
        cells = [row["variant"], changed, *[_cell(row.get(key)) for key, _ in training]]
        cells += [_cell(row["tasks"].get(task)) for task in tasks] + [row["status"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += [
        "",
        "Losses and reward accuracies: the last logged values of each stage "
        "(`<run_dir>/{sft,dpo}/metrics.jsonl`); task columns: the final model's "
        "`eval/<model>/results.json` (accuracy, acc_norm for choice tasks, BLEU-4, perplexity).",
        "",
    ]
    return "\n".join(lines)


# -- running ----------------------------------------------------------------------------


def run_sweep(
    path: str | Path,
    *,
    overrides: Sequence[str] = (),
    sets: Sequence[str] = (),
    only: Sequence[str] | None = None,
    smoke: bool = False,
    stages: list[Stage] | None = None,
    echo: Callable[[str], None] = print,
) -> SweepResult:
    """Run every variant of a sweep and write the results table.

    A variant that fails is recorded as failed (with its error) and the others
    still run. ``stages`` defaults to the full pipeline (tests pass their own).
    """
    if stages is None:
        from tutorlm.pipeline.stages import pipeline_stages

        stages = pipeline_stages()
    name, variants = expand_variants(path, overrides=overrides, sets=sets, only=only, smoke=smoke)
    out_dir = Path(variants[0].recipe.run_root) / f"{name}-sweep"
    result = SweepResult()
    done: list[Variant] = []
    for variant in variants:
        recipe = variant.recipe
        echo(f"\n== variant {variant.name}: {recipe.run_dir}/  {variant.description}".rstrip())
        save_resolved(recipe)
        plans = [(shareable_stages(d.recipe, recipe), d) for d in done]
        names, donor = max(plans, key=lambda plan: len(plan[0]), default=([], None))
        if names:
            copied = share_stages(donor.recipe, recipe, stages, names)
            if copied:
                echo(f"shared from variant {donor.name}: {', '.join(copied)}")
        try:
            run_pipeline(recipe, stages, echo=echo)
            status = "done"
            done.append(variant)
        except Exception as error:  # one failed variant must not lose the others' rows
            status = f"failed: {type(error).__name__}: {error}".splitlines()[0]
            echo(traceback.format_exc())
        result.rows.append(variant_row(variant, status))
    out_dir.mkdir(parents=True, exist_ok=True)
    result.markdown = out_dir / "results.md"
    result.json = out_dir / "results.json"
    title = f"Sweep of {name} ({len(result.rows)} variants)"
    result.markdown.write_text(results_markdown(title, result.rows))
    payload = {
        "sweep": name,
        "recipe": str(path),
        "smoke": smoke,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "variants": result.rows,
    }
    result.json.write_text(json.dumps(payload, indent=2) + "\n")
    echo(f"\nresults: {result.markdown}")
    return result
