"""The ``train`` section of a recipe: settings of the training stage.

tutorlm's own keys cover what TRL does not own or gets wrong (LoRA, the
preference loss and its maths, where DPO starts, data files, QLoRA, threads).
Everything else about the optimisation goes through ``sft:`` and ``dpo:``
verbatim into TRL's ``SFTConfig`` / ``DPOConfig``, which validate their own
fields when training starts (:func:`tutorlm.train.trl_args.check_trl_sections`).
Keys of those configs that tutorlm sets itself, or that the DPO stage does not
honour because it computes the loss itself, are refused here by name, so that
no setting is silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tutorlm.train.losses import LOSS_NAMES

# TRL fields that tutorlm sets from its own keys or its layout: why, and what to use.
_OWNED_BY_TUTORLM = {
    "output_dir": "tutorlm writes to <run_dir>/sft and <run_dir>/dpo",
    "logging_dir": "TensorBoard events go to <output dir>/tensorboard",
    "model_init_kwargs": "the model comes from the recipe's top-level 'model' (or train.dpo_start)",
    "resume_from_checkpoint": "use `tutorlm train ... --resume`",
    "dataset_kwargs": "tutorlm tokenizes the records itself",
    "dataset_text_field": "tutorlm reads the SFT record format",
    "packing": "tutorlm batches by length without padding waste; packing is not used",
    "padding_free": "tutorlm batches by length without padding waste",
    "assistant_only_loss": "tutorlm always trains SFT on assistant turns only",
    "completion_only_loss": "tutorlm always trains SFT on assistant turns only",
    "chat_template_path": "the model's own chat template is used and saved with it",
    "loss_type": "tutorlm's SFT loss is the mean NLL of assistant tokens",
    **dict.fromkeys(
        (
            "activation_offloading",
            "dataset_num_proc",
            "eos_token",
            "eval_packing",
            "packing_strategy",
            "pad_to_multiple_of",
            "pad_token",
            "router_aux_loss_coef",
            "shuffle_dataset",
            "truncation_mode",
            "trust_remote_code",
        ),
        "a TRL trainer option; tutorlm's trainers (transformers.Trainer) do not read it",
    ),
}
_DPO_OWNED = {
    "beta": "use train.beta",
    "loss_type": "use train.loss (dpo, cdpo, robust, ipo, hinge)",
    "label_smoothing": "use train.eps with train.loss: cdpo or robust",
    "precompute_ref_log_probs": "use train.precompute_ref_logps",
    "loss_weights": "not supported: tutorlm trains with one loss from train.loss",
    "ld_alpha": "not supported by tutorlm's preference losses",
    "f_divergence_type": "not supported by tutorlm's preference losses",
    "f_alpha_divergence_coef": "not supported by tutorlm's preference losses",
    "use_weighting": "not supported by tutorlm's preference losses",
    "discopop_tau": "not supported by tutorlm's preference losses",
    "sync_ref_model": "the reference is the adapter-disabled base model",
    "ref_model_mixup_alpha": "the reference is the adapter-disabled base model",
    "ref_model_sync_steps": "the reference is the adapter-disabled base model",
}


class LoraSettings(BaseModel):
    """The LoRA adapter trained in both stages."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1)
    """Rank of the update matrices."""
    alpha: float = Field(default=32, gt=0)
    """Scale of the update: the adapter's output is multiplied by ``alpha / r``."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the adapter's input during training."""
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    """Module names that get an adapter, or ``all-linear`` for every linear layer
    but the output head (which DPO cannot train through its log-prob path)."""


class TrainConfig(BaseModel):
    """Settings of the training stage (``tutorlm train sft`` and ``tutorlm train dpo``)."""

    model_config = ConfigDict(extra="forbid")

    lora: LoraSettings = Field(default_factory=LoraSettings)
    """The LoRA adapter (both stages, unless ``dpo_lora`` is set)."""
    dpo_lora: LoraSettings | None = None
    """The DPO stage's own adapter, when it differs from SFT's (EPFLLaMA: r 32 for
    SFT, r 64 for DPO); ``lora`` if unset."""
    loss: Literal[LOSS_NAMES] = "dpo"
    """Preference loss of the DPO stage; formulas in ``tutorlm.train.losses``."""
    beta: float = Field(default=0.1, gt=0)
    """KL strength of the preference loss (IPO's tau)."""
    eps: float = Field(default=0.0, ge=0, lt=1)
    """Label-noise rate for ``cdpo`` (EPFLLaMA: 0.2) and ``robust`` (< 0.5)."""
    dpo_start: Literal["m0", "m1"] = "m1"
    """Where DPO starts: ``m1`` = the merged SFT model, ``m0`` = the base model."""
    dpo_split_pairs: bool = True
    """Backpropagate the chosen and the rejected half of each DPO batch one after
    the other: DPO then needs about SFT's memory at the same batch size, for one
    extra gradient-free forward of the rejected half (~15% of a step)."""
    precompute_ref_logps: bool = False
    """Compute the reference log-probs once before DPO instead of at every step:
    pays off from the second epoch on."""
    qlora: bool = False
    """Load the frozen base in 4 bits (needs a CUDA GPU and bitsandbytes)."""
    threads: int | Literal["auto"] = "auto"
    """Torch threads: ``auto`` = the CPU cores this process may run on, shared among
    the processes of the node, minus the cores other processes keep busy right now
    (/proc/stat over a quarter second, less this process's own CPU time)."""
    sft_train_file: str | None = None
    """SFT records for training; default ``<run_dir>/data/sft.train.jsonl``."""
    sft_val_file: str | None = None
    """SFT records for validation; default ``<run_dir>/data/sft.val.jsonl`` if present."""
    prefs_train_file: str | None = None
    """Preference records for DPO; default ``<run_dir>/data/prefs.train.jsonl``."""
    prefs_val_file: str | None = None
    """Preference records for validation; default ``<run_dir>/data/prefs.val.jsonl`` if present."""
    sft: dict[str, Any] = Field(default_factory=dict)
    """Fields of TRL's ``SFTConfig`` (learning_rate, max_steps, num_train_epochs,
    per_device_train_batch_size, gradient_accumulation_steps, lr_scheduler_type,
    warmup_steps (a float < 1 is a ratio), max_length, logging_steps, save_steps, ...)."""
    dpo: dict[str, Any] = Field(default_factory=dict)
    """Fields of TRL's ``DPOConfig``; the preference loss itself is set by
    ``loss``, ``beta`` and ``eps`` above."""

    @field_validator("sft")
    @classmethod
    def _sft_keys_not_owned(cls, section: dict[str, Any]) -> dict[str, Any]:
        _refuse_owned(section, _OWNED_BY_TUTORLM, "sft")
        return section

    @field_validator("dpo")
    @classmethod
    def _dpo_keys_not_owned(cls, section: dict[str, Any]) -> dict[str, Any]:
        _refuse_owned(section, {**_OWNED_BY_TUTORLM, **_DPO_OWNED}, "dpo")
        return section

    @model_validator(mode="after")
    def _eps_fits_loss(self) -> TrainConfig:
        if self.eps > 0 and self.loss not in ("cdpo", "robust"):
            raise ValueError(
                f"eps={self.eps} has no effect with loss '{self.loss}'; "
                "label noise applies to loss: cdpo or robust"
            )
        if self.loss == "robust" and self.eps >= 0.5:
            raise ValueError(f"loss 'robust' needs eps < 0.5, got {self.eps}")
        return self


def _refuse_owned(section: dict[str, Any], owned: dict[str, str], name: str) -> None:
    for key in section:
        if key in owned:
            raise ValueError(f"'{key}' cannot be set in train.{name}: {owned[key]}")
