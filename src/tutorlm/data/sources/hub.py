"""Hub datasets, through ``datasets.load_dataset``; offline by default.

tutorlm runs offline unless ``TUTORLM_ONLINE=1``: then a hub source only reads a
copy already in the local datasets cache, and a missing one fails at once with
a message that says what to do, instead of retrying a network it cannot reach.
A preset can instead read its bundled fixture rows (``fixture: true``), which is
how tests and smoke runs exercise every preset without a network.
"""

from __future__ import annotations

from tutorlm.data.examples import DataError, Example
from tutorlm.data.formats import file_sha256
from tutorlm.data.sources.base import Reader
from tutorlm.data.sources.hub_presets import CONVERTERS, HubPreset, get_preset
from tutorlm.data.sources.rows import (
    REQUIRED,
    check_columns,
    check_mapping,
    convert_row,
    mapping_columns,
)


def _force_offline() -> None:
    """Offline mode for ``datasets`` even if it was imported before the flags were set."""
    from tutorlm.models import apply_offline_env, is_online

    apply_offline_env()
    if not is_online():
        import datasets.config
        import huggingface_hub.constants

        datasets.config.HF_HUB_OFFLINE = True
        huggingface_hub.constants.HF_HUB_OFFLINE = True


SCRIPT_ERROR = "Dataset scripts are no longer supported"
"""What ``datasets`` >= 4 raises for a repository that still holds a loading script."""


def _hint(error: Exception, online: bool) -> str:
    """What to do about a failed ``load_dataset``, by its cause.

    A repository with a loading script is refused by ``datasets`` >= 4 whatever the
    id, config or network; most such datasets have a Parquet copy the hub made on
    the ``refs/convert/parquet`` branch, which ``revision`` selects.
    """
    if SCRIPT_ERROR in str(error):
        return (
            "the dataset repository holds a loading script, which datasets >= 4 no "
            "longer runs: set revision: refs/convert/parquet on the source to read the "
            "hub's Parquet conversion (or install datasets < 4)"
        )
    if not online:
        return (
            "tutorlm is offline and the dataset is not in the local datasets cache: "
            "set TUTORLM_ONLINE=1 to download it, or use a bundled or jsonl source "
            "(or fixture: true for a smoke run)"
        )
    return "check the id, config, split and your network"


class HubReader(Reader):
    """Reads a hub dataset (or its preset's fixture rows) and maps its columns."""

    shapes = tuple(REQUIRED)

    def __init__(self, config, kind, seed, section):
        super().__init__(config, kind, seed, section)
        self.preset: HubPreset | None = get_preset(config.preset) if config.preset else None
        preset = self.preset
        self.dataset_id = config.dataset or (preset.dataset if preset else None)
        self.dataset_config = config.config or (preset.config if preset else None)
        self.split = config.split or (preset.split if preset else "train")
        self.data_dir = config.data_dir or (preset.data_dir if preset else None)
        self.revision = config.revision or (preset.revision if preset else None)
        self.columns = {**(preset.columns if preset else {}), **config.columns}
        self.converter = CONVERTERS[preset.converter] if preset and preset.converter else None
        self.html = config.html_to_text or bool(preset and preset.html)
        self._data = None

    @property
    def shape(self) -> str:
        if self.config.shape != "auto":
            return self.config.shape
        if self.preset is not None:
            return self.preset.shape
        raise DataError(f"source '{self.name}': a hub source without a preset needs a shape")

    def _load(self):
        if self._data is not None:
            return self._data
        if self.config.fixture:
            from tutorlm.data.sources.hub_presets import load_preset_fixture

            self._data = load_preset_fixture(self.config.preset)
            return self._data
        _force_offline()
        import datasets

        try:
            self._data = datasets.load_dataset(
                self.dataset_id,
                self.dataset_config,
                split=self.split,
                data_dir=self.data_dir,
                revision=self.revision,
            )
        except Exception as error:  # name the source and the way out, not the socket
            from tutorlm.models import is_online

            hint = _hint(error, is_online())
            revision = f", revision {self.revision!r}" if self.revision else ""
            raise DataError(
                f"source '{self.name}': cannot load hub dataset {self.dataset_id!r} "
                f"(config {self.dataset_config!r}, split {self.split!r}{revision}): "
                f"{type(error).__name__}: {str(error)[:200]}. {hint}"
            ) from None
        return self._data

    def check(self) -> None:
        super().check()
        provided = self.preset.provides if self.preset else ()
        check_mapping(self.name, self.shape, self.columns, provided)
        data = self._load()
        present = set(data[0]) if isinstance(data, list) and data else set()
        if not isinstance(data, list):
            present = set(data.column_names)
        needed = mapping_columns(self.shape, self.columns)
        needed += list(self.preset.reads) if self.preset else []
        check_columns(self.name, present, needed)

    def rows(self):
        data = self._load()
        return iter(data), len(data)

    def to_example(self, row, index: int) -> Example:
        return convert_row(dict(row), index, self.shape, self.columns, self.converter)

    def group_namespace(self) -> str:
        parts = [self.dataset_id, self.dataset_config, self.data_dir, self.split]
        return "hub:" + "/".join(str(p) for p in parts)

    def fingerprint(self) -> dict:
        info = {
            "dataset": self.dataset_id,
            "config": self.dataset_config,
            "split": self.split,
            "data_dir": self.data_dir,
            "revision": self.revision,
        }
        if self.config.fixture:
            from importlib import resources

            name = f"fixtures/{self.preset.fixture}.jsonl"
            info["fixture_sha256"] = file_sha256(resources.files("tutorlm.data").joinpath(name))
        return info
