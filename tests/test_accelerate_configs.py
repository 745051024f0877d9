"""The shipped accelerate configs parse and carry the keys `accelerate launch` needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
REQUIRED = ("compute_environment", "distributed_type", "mixed_precision", "num_processes")


@pytest.mark.parametrize(
    ("name", "kind", "section"),
    [
        ("ddp", "MULTI_GPU", None),
        ("fsdp", "FSDP", "fsdp_config"),
        ("deepspeed_zero2", "DEEPSPEED", "deepspeed_config"),
        ("deepspeed_zero3", "DEEPSPEED", "deepspeed_config"),
    ],
)
def test_accelerate_config_has_required_keys(name, kind, section):
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    assert [key for key in REQUIRED if key not in config] == []
    assert (config["distributed_type"], config["mixed_precision"]) == (kind, "bf16")
    assert config["num_processes"] == 2
    if section:
        assert isinstance(config[section], dict)


def test_zero_stages():
    stages = {
        name: yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["deepspeed_config"][
            "zero_stage"
        ]
        for name in ("deepspeed_zero2", "deepspeed_zero3")
    }
    assert stages == {"deepspeed_zero2": 2, "deepspeed_zero3": 3}


def test_accelerate_reads_them():
    accelerate = pytest.importorskip("accelerate.commands.config.config_args")
    for path in sorted(CONFIGS.glob("*.yaml")):
        config = accelerate.ClusterConfig.from_yaml_file(str(path))
        assert config.num_processes == 2
