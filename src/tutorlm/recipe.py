"""A recipe: one YAML file that says what a run builds, trains, measures and serves.

Each section is a typed pydantic model that lives with its stage (``data`` in
``tutorlm/data/config.py`` and so on). A recipe holds values, never class paths.
Unknown keys are errors that name the key and the nearest valid one, and any
value can be overridden from the command line with a dotted path::

    tutorlm data build recipes/demo.yaml data.seed=1 train.learning_rate=1e-4
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tutorlm.bulk import GenerationConfig
from tutorlm.data.config import DataConfig
from tutorlm.errors import TutorlmError
from tutorlm.evaluate.config import EvalConfig
from tutorlm.hardware import DEVICE_PATTERN
from tutorlm.layout import RunLayout
from tutorlm.models import BUNDLED
from tutorlm.quantize.config import QuantizeConfig
from tutorlm.rag.config import RagConfig
from tutorlm.serve.config import ServeConfig
from tutorlm.smoke import SmokeConfig
from tutorlm.train.config import TrainConfig

VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class SweepVariant(BaseModel):
    """One run of ``tutorlm sweep``: the recipe with these values changed."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(pattern=VARIANT_NAME)
    """Short name; the variant runs as ``<recipe name>-<name>`` in its own run directory."""
    description: str = ""
    """What the variant stands for (e.g. the report's table row or figure it reproduces)."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Dotted keys and their values, as on the command line (``train.beta: 0.4``); a
    value may be a whole list or mapping (``data.prefs.sources: [...]``). Empty: the
    recipe as written."""

    @field_validator("overrides")
    @classmethod
    def _dotted_keys(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        for key in overrides:
            parts = key.split(".")
            if not all(parts) or key in ("name", "sweep"):
                raise ValueError(
                    f"override key {key!r} must be a dotted recipe key other than name"
                )
        return overrides


class Recipe(BaseModel):
    """A whole run, from data to a served tutor."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    """Run name; outputs go to ``<run_root>/<name>/``."""
    description: str = ""
    """One line on what the recipe reproduces."""
    seed: int = 0
    """Seed for every random choice of the run (sampling, splits, training)."""
    model: str = BUNDLED
    """Base model M0: a bundled name, a local directory or a hub id."""
    chat_template: str | None = None
    """Chat template for data rendering, training and serving: ``zephyr``, ``chatml``,
    a Jinja string, or None to keep the base model's own (see ``tutorlm.templates``)."""
    run_root: str = "runs"
    """Folder that holds run directories, relative to the working directory."""
    device: str = "auto"
    """Where every stage that runs a model runs it: ``auto`` (the GPU when there is
    one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``. Checked against this machine
    by ``tutorlm.hardware.resolve_device`` before a stage loads anything."""
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    """How stages generate many answers at once (corruption, generation metrics, samples):
    the engine (``transformers`` or ``vllm``), its batch and GPU settings, and the
    samples' sampling (see ``tutorlm.bulk`` and ``docs/generation.md``)."""
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    smoke: SmokeConfig = Field(default_factory=SmokeConfig)
    """How ``tutorlm run --smoke`` shrinks this recipe (see ``tutorlm.smoke``)."""
    sweep: list[SweepVariant] = Field(default_factory=list)
    """Variants ``tutorlm sweep`` runs and tabulates (see ``tutorlm.pipeline.sweep``)."""

    source_path: str | None = Field(default=None, exclude=True)
    """The YAML file this recipe came from (not part of the recipe's identity)."""

    @field_validator("device")
    @classmethod
    def _device_shape(cls, device: str) -> str:
        """The setting's shape only: whether this machine has the GPU is checked when a
        stage runs (a recipe written on a laptop for a GPU server still loads)."""
        text = device.strip().lower()
        if not re.match(DEVICE_PATTERN, text):
            raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
        return text

    @property
    def run_dir(self) -> Path:
        """``<run_root>/<name>``: where every stage of this recipe writes."""
        return Path(self.run_root) / self.name

    @property
    def layout(self) -> RunLayout:
        """Every path of this run (``tutorlm.layout``): the only way stages find files."""
        files = {
            "sft.train.jsonl": self.train.sft_train_file,
            "sft.val.jsonl": self.train.sft_val_file,
            "prefs.train.jsonl": self.train.prefs_train_file,
            "prefs.val.jsonl": self.train.prefs_val_file,
        }
        return RunLayout(
            run_dir=self.run_dir,
            base_model=self.model,
            index_dir=self.rag.index_dir,
            data_files={name: path for name, path in files.items() if path},
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved recipe, every default filled in."""
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """sha256 of the resolved recipe: equal recipes have equal hashes."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


class RecipeError(TutorlmError, ValueError):
    """A recipe that cannot be loaded, with the file and key at fault."""


def _nearest_key(model: type[BaseModel], location: tuple, bad_key: str) -> str | None:
    """The valid key closest to ``bad_key`` in the model reached through ``location``."""
    current: Any = model
    for part in location:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        info = current.model_fields.get(str(part))
        if info is None:
            return None
        current = info.annotation
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return None
    matches = difflib.get_close_matches(bad_key, list(current.model_fields), n=1, cutoff=0.5)
    return matches[0] if matches else None


def _explain(error: ValidationError, origin: str) -> str:
    lines = [f"{origin}: invalid recipe"]
    for item in error.errors():
        location = tuple(item["loc"])
        dotted = ".".join(str(part) for part in location)
        if item["type"] == "extra_forbidden":
            hint = _nearest_key(Recipe, location[:-1], str(location[-1]))
            line = f"  unknown key '{dotted}'"
            if hint:
                line += f" (did you mean '{'.'.join([*map(str, location[:-1]), hint])}'?)"
            lines.append(line)
        else:
            lines.append(f"  {dotted}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


class _RecipeLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's floats: ``5e-4`` is a number, not the string PyYAML's
    1.1 rules make it (TRL would get ``learning_rate="5e-4"`` and fail deep inside)."""


_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


MAX_YAML_VALUES = 100_000
"""Most values a YAML text may expand to through aliases (``*name``). Aliases share
one value in memory, but every later copy (validation, overrides) expands them: a
recipe with 9 levels of 9 aliases is 387 million values, and took 3.35 GB before a
MemoryError. A real recipe has a few hundred."""


def parse_yaml(text: str, origin: str = "YAML"):
    """Parse recipe YAML (a file, or one override's value): the project's one YAML reader.

    Args:
        text: the YAML.
        origin: what the text is (a file's path), named in every error.

    Raises:
        RecipeError: invalid YAML (one line, with its position), aliases that expand
            past ``MAX_YAML_VALUES`` or refer to the value containing them, or
            nesting too deep to read.
    """
    loader = _RecipeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_aliases(node, origin)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise RecipeError(f"{origin}: not valid YAML: {problem}{where}") from None
    except RecursionError:
        raise RecipeError(f"{origin}: YAML nested too deeply to read") from None
    finally:
        loader.dispose()


def _check_aliases(root: yaml.Node, origin: str) -> None:
    """Refuse an alias bomb or a value that contains itself, without expanding either.

    Walks the node graph once (each shared node once), summing how many values each
    node stands for when its aliases are expanded.
    """
    expanded: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        children = _children(node)
        if finished:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in children)
            if expanded[key] > MAX_YAML_VALUES:
                raise RecipeError(
                    f"{origin}: YAML aliases expand to more than {MAX_YAML_VALUES:,} values "
                    f"(from line {node.start_mark.line + 1}); refused as an alias bomb"
                )
        elif key in on_path:
            raise RecipeError(
                f"{origin}: a YAML alias refers to the value that contains it "
                f"(line {node.start_mark.line + 1}); the value would be infinite"
            )
        elif key not in expanded:
            on_path.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in children)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def apply_override(data: dict, override: str) -> None:
    """Apply one ``dotted.key=value`` override in place; the value is parsed as YAML."""
    if "=" not in override:
        raise RecipeError(f"override {override!r} is not of the form key=value")
    key, _, value = override.partition("=")
    try:
        set_dotted(data, key.strip(), parse_yaml(value))
    except RecipeError as error:
        raise RecipeError(f"override {override!r}: {error}") from None


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, creating missing sections.

    Raises:
        RecipeError: a part of the key names a value, not a section.
    """
    parts = key.split(".")
    target = data
    for part in parts[:-1]:
        node = target.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"'{part}' is not a section")
        target = node
    target[parts[-1]] = value


def recipe_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = (), origin="recipe"):
    """Validate a recipe given as a dict, after applying dotted overrides."""
    data = json.loads(json.dumps(data))  # a deep copy the overrides may change
    for override in overrides:
        apply_override(data, override)
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(_explain(error, origin)) from None


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, smoke: bool = False
) -> Recipe:
    """Load a YAML recipe and apply ``key=value`` overrides.

    Raises:
        RecipeError: on a missing file, bad YAML, an unknown key (named with the
            nearest valid one) or a value of the wrong type.

    ``smoke=True`` shrinks the recipe for a fast offline run (``tutorlm.smoke``).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    data = parse_yaml(read_recipe_text(path), origin=str(path)) or {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections")
    if smoke:
        from tutorlm.smoke import smoke_overrides

        shrunk = smoke_overrides(data)
        data, overrides = shrunk["recipe"], [*shrunk["overrides"], *overrides]
    recipe = recipe_from_dict(data, overrides, origin=str(path))
    recipe.source_path = str(path)
    return recipe


def read_recipe_text(path: Path) -> str:
    """A recipe file's text.

    Raises:
        RecipeError: unreadable, or not UTF-8 (a UTF-8 byte-order mark is fine).
    """
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise RecipeError(f"{path}: cannot read the recipe: {error.strerror or error}") from None
    except UnicodeDecodeError as error:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {error.start}); save the recipe as UTF-8"
        ) from None


def save_resolved(recipe: Recipe) -> Path:
    """Write the resolved recipe into its run directory as ``recipe.yaml``."""
    from tutorlm.data.formats import atomic_write_text

    target = recipe.layout.recipe_file
    header = f"# resolved recipe, sha256 {recipe.hash()}\n"
    atomic_write_text(target, header + yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    return target
