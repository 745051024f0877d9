"""transformers' Trainer with tutorlm's loss, scoring and logged metrics.

tutorlm owns what it promises (the loss, the collation, the log-probs), so the
trainers subclass ``transformers.Trainer`` directly and override only its
documented extension points (``compute_loss``, ``training_step``,
``prediction_step``, ``log``). transformers keeps the loop, the optimizer,
accelerate (DDP / FSDP / DeepSpeed), checkpoints and resume; TRL's ``SFTConfig`` /
``DPOConfig`` are the argument classes, so the recipe's ``sft:`` / ``dpo:``
sections keep TRL's field names.

- the loss: SFT is the mean negative log-likelihood of assistant tokens; DPO is
  one of ``tutorlm.train.losses``, so cDPO is cDPO whatever TRL's version;
- the scoring: only positions that carry a loss go through the output head
  (``tutorlm.logprobs.scored_logps``);
- the batches: tokenized once by ``tutorlm.train.data`` and drawn grouped by the
  dataset's ``length`` column (transformers' ``group_by_length`` sampler).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from transformers import Trainer

from tutorlm.logprobs import scored_logps
from tutorlm.train.losses import preference_loss


def with_adapter(model, peft_config, args):
    """The model with a fresh LoRA adapter, ready for the arguments' checkpointing.

    The adapter's random initialisation is drawn right after seeding with
    ``args.seed``, so it depends on the recipe's seed alone, not on how many random
    numbers earlier code drew. Under QLoRA in bf16 the adapter weights are kept in
    bf16, the QLoRA paper's recipe; under fp16 mixed precision (a GPU without bf16)
    they stay fp32, which the fp16 loss scaler needs.
    """
    if peft_config is None:
        return model
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(args.seed)
    model = get_peft_model(model, peft_config)
    if args.activation_checkpointing:
        model.enable_input_require_grads()  # recomputed blocks need a grad-carrying input
    if getattr(model, "is_loaded_in_4bit", False) and getattr(args, "bf16", False):
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    return model


def disable_dropout(model) -> None:
    """Set every dropout to 0: DPO's policy and reference must see the same forward."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class TutorTrainer(Trainer):
    """What both stages share: the adapter, token counts, logged metrics, loss-only eval.

    Args:
        model: the causal LM to train.
        peft_config: PEFT's config of the adapter to add, or None.
        **kwargs: ``transformers.Trainer``'s (args, data_collator, datasets,
            processing_class, callbacks).
    """

    def __init__(self, model, *, peft_config=None, **kwargs):
        super().__init__(model=with_adapter(model, peft_config, kwargs["args"]), **kwargs)
        self.tokens_seen = 0
        self.logged: dict[str, dict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def on_device(self, inputs: dict) -> dict:
        """The batch's tensors on the training device."""
        return {
            key: value.to(self.args.device) if isinstance(value, torch.Tensor) else value
            for key, value in inputs.items()
        }

    def count_tokens(self, attention_mask: torch.Tensor) -> None:
        """Keep the running count of real (non-pad) tokens that feeds tokens/s."""
        tokens = self.accelerator.gather_for_metrics(attention_mask.sum()).sum().item()
        self.tokens_seen += int(tokens)

    def record(self, mode: str, name: str, value: torch.Tensor) -> None:
        """One batch's value of a metric, averaged over processes; logged at the next log."""
        self.logged[mode][name].append(self.accelerator.gather_for_metrics(value).mean().item())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the recorded metrics (mean since the last log) and the token count."""
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self.logged[mode].items():
            logs[prefix + name] = sum(values) / len(values)
        self.logged[mode].clear()
        if mode == "train":
            logs["num_tokens"] = float(self.tokens_seen)
        super().log(logs, start_time)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation computes the training loss (and its recorded metrics) only."""
        inputs = self.on_device(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None


class TutorSFTTrainer(TutorTrainer):
    """SFT on assistant tokens, scoring only those positions.

    The loss is the negative log-likelihood summed over the assistant tokens of
    all micro-batches of an optimizer step, divided by their count
    (``num_items_in_batch``, which transformers counts from the collator's
    ``shift_labels``), so gradient accumulation does not change it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = True  # the loss below is normalised by num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = torch.nn.functional.pad(inputs["shift_labels"] != -100, (1, 0))  # (B, T)
        scored = scored_logps(model, inputs["input_ids"], inputs["attention_mask"], mask)
        total = -scored.logps.sum()
        count = scored.logps.numel() if num_items_in_batch is None else num_items_in_batch
        loss = total / torch.as_tensor(count, device=total.device).clamp(min=1)
        if (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and self.accelerator.num_processes > 1
        ):
            loss = loss * self.accelerator.num_processes  # DDP averages gradients over processes
        if model.training:
            self.count_tokens(inputs["attention_mask"])
        return (loss, scored) if return_outputs else loss


def _rows(inputs: dict, rows: slice) -> dict:
    """Some rows of a preference batch, cropped to their longest sequence."""
    width = int(inputs["attention_mask"][rows].sum(dim=1).max())
    return {
        key: inputs[key][rows, :width] for key in ("input_ids", "attention_mask", "completion_mask")
    }


def _sums(model, part: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probs and completion lengths of a batch part, ``(B,)`` each."""
    scored = scored_logps(model, part["input_ids"], part["attention_mask"], part["completion_mask"])
    return scored.per_sequence()


class TutorDPOTrainer(TutorTrainer):
    """DPO whose loss is ``tutorlm.train.losses.preference_loss``.

    The reference log-probs come from the batch (precomputed) or from the same
    model with its LoRA adapter disabled; the logged rewards, accuracies and
    margins keep TRL's names and are computed from the same tensors as the loss.

    With ``split_pairs`` a training step backpropagates the chosen half of the
    batch, then the rejected half, so only one half's activations are alive at
    a time: DPO then needs about the memory of SFT at the same batch size, for
    one extra gradient-free forward of the rejected half. The gradient is exact:
    each half's backward is weighted by the loss's derivative at the same point
    (chosen, rejected). It needs deterministic forwards (dropout off, the
    ``disable_dropout`` default) and is skipped under DeepSpeed, whose engine
    expects one backward per micro-batch.
    """

    def __init__(
        self, *args, loss_name: str, eps: float = 0.0, split_pairs: bool = False, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.loss_name, self.eps, self.beta = loss_name, eps, self.args.beta
        if self.args.disable_dropout:
            disable_dropout(self.model)
        self.split_pairs = (
            split_pairs and not self.is_deepspeed_enabled and self.args.disable_dropout
        )

    def reference_logps(self, *parts: dict) -> torch.Tensor:
        """Summed log-probs of each sequence under the reference model, ``(2B,)``.

        Precomputed values come from the batch; otherwise each part is scored by
        the same model with its adapter disabled, in the same shapes as the policy
        scores it, so that before the first update policy and reference agree
        exactly (bf16 results depend on the padded shape).
        """
        if "ref_chosen_logps" in parts[0]:
            return torch.cat([parts[0]["ref_chosen_logps"], parts[0]["ref_rejected_logps"]])
        unwrapped = self.accelerator.unwrap_model(self.model)
        with torch.no_grad(), unwrapped.disable_adapter():
            return torch.cat([_sums(self.model, part)[0] for part in parts])

    def _loss(self, chosen, rejected, reference, chosen_lengths, rejected_lengths):
        ref_chosen, ref_rejected = reference.to(chosen.dtype).chunk(2)
        return preference_loss(
            self.loss_name,
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=self.beta,
            eps=self.eps,
            chosen_lengths=chosen_lengths,
            rejected_lengths=rejected_lengths,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        policy, lengths = _sums(model, inputs)  # (2B,), chosen rows first
        reference = self.reference_logps(inputs)
        policy_chosen, policy_rejected = policy.chunk(2)
        result = self._loss(policy_chosen, policy_rejected, reference, *lengths.chunk(2))
        loss = result.losses.mean()
        self._record_pairs(mode, result, policy_chosen, policy_rejected)
        if mode == "train":
            self.count_tokens(inputs["attention_mask"])
        return (loss, policy) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.split_pairs:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self.on_device(inputs)
        half = inputs["input_ids"].shape[0] // 2
        chosen, rejected = _rows(inputs, slice(0, half)), _rows(inputs, slice(half, None))
        if "ref_chosen_logps" in inputs:
            reference = self.reference_logps(inputs)
        else:
            reference = self.reference_logps(chosen, rejected)
        scale = 1.0 / self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager():
            with torch.no_grad():
                rejected_value, rejected_lengths = _sums(model, rejected)
            chosen_logps, chosen_lengths = _sums(model, chosen)
            result = self._loss(
                chosen_logps, rejected_value, reference, chosen_lengths, rejected_lengths
            )
            with self.accelerator.no_sync(model):  # gradients are reduced after the second half
                self.accelerator.backward(result.losses.mean() * scale)
            chosen_value = chosen_logps.detach()
            del chosen_logps, result
            rejected_logps, _ = _sums(model, rejected)
            result = self._loss(
                chosen_value, rejected_logps, reference, chosen_lengths, rejected_lengths
            )
            loss = result.losses.mean() * scale
            self.accelerator.backward(loss)
        self._record_pairs("train", result, chosen_value, rejected_logps)
        self.count_tokens(inputs["attention_mask"])
        return loss.detach()

    def _record_pairs(self, mode, result, policy_chosen, policy_rejected) -> None:
        self.record(mode, "rewards/chosen", result.chosen_rewards)
        self.record(mode, "rewards/rejected", result.rejected_rewards)
        self.record(mode, "rewards/accuracies", result.accuracies)
        self.record(mode, "rewards/margins", result.margins)
        self.record(mode, "logps/chosen", policy_chosen.detach())
        self.record(mode, "logps/rejected", policy_rejected.detach())
