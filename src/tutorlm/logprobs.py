"""log pi(reply | prompt), once: the token split, the scoring forward and the implicit reward.

Training (the SFT and DPO losses) and evaluation (reward accuracy) both ask how
likely a model finds a reply to a prompt. They must agree on three decisions,
so each is made here and nowhere else:

- *where the reply starts*: by token ids, not by strings. The prompt is rendered
  through the chat template with the assistant turn opened, the conversation with
  the reply appended; the reply is what follows their common id prefix
  (:func:`split_reply`, :func:`split_pair`);
- *how a token is scored*: ``log softmax(hidden @ head.T)[next token]``, with the
  log-softmax in float32 (:func:`token_logps`, :func:`scored_logps`);
- *what a preference pair says*: the implicit DPO reward
  ``beta * (log pi(y|x) - log ref(y|x))`` and when a pair counts as correct
  (:func:`implicit_reward`, :func:`prefers_chosen`, :data:`TIE_TOLERANCE`).

:func:`scored_logps` runs the backbone and projects only the positions a loss reads
through the output head; inside a DDP / FSDP / DeepSpeed wrapper it goes through the
wrapper's forward (DDP arms its gradient reduction there) and takes the backbone's
hidden states with a hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_CHUNK_ROWS = 256
"""Rows of logits alive at once: 256 x 49k x 4 bytes = 50 MB for SmolLM2."""

TIE_TOLERANCE = 1e-6
"""Reward margins within this distance of zero are ties: a policy identical to its
reference gives margins of exactly 0, and rounding gives margins of about 1e-7."""


# -- the token split ------------------------------------------------------------------


def render_ids(
    tokenizer, messages: list[dict], *, add_generation_prompt: bool = False
) -> list[int]:
    """Token ids of messages rendered by the tokenizer's chat template.

    The template writes its own special tokens (BOS, turn markers), so the text is
    tokenized without adding any. A tokenizer without a template gets the turns'
    contents, each followed by a newline (the prompt of a plain LM).
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    else:
        text = "".join(message["content"] + "\n" for message in messages)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Number of leading tokens two id lists share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def split_reply(tokenizer, prompt: list[dict], reply: list[dict]) -> tuple[list[int], list[int]]:
    """``(prompt_ids, reply_ids)`` of one reply: the reply starts where the prompt's
    render (assistant turn opened) stops matching the render of prompt + reply."""
    prompt_ids = render_ids(tokenizer, prompt, add_generation_prompt=True)
    whole = render_ids(tokenizer, prompt + reply)
    start = common_prefix_length(prompt_ids, whole)
    return whole[:start], whole[start:]


def split_pair(tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict]):
    """``(prompt_ids, chosen_ids, rejected_ids)`` of a preference pair.

    Both replies follow the same prompt ids: the shorter of the two common
    prefixes (as in TRL), so the chosen and rejected log-probs condition on the
    same context.
    """
    prompt_ids = render_ids(tokenizer, prompt, add_generation_prompt=True)
    with_chosen = render_ids(tokenizer, prompt + chosen)
    with_rejected = render_ids(tokenizer, prompt + rejected)
    start = min(
        common_prefix_length(prompt_ids, with_chosen),
        common_prefix_length(prompt_ids, with_rejected),
    )
    return prompt_ids[:start], with_chosen[start:], with_rejected[start:]


# -- scoring ------------------------------------------------------------------------------


class _ChunkedTokenLogps(torch.autograd.Function):
    """``log softmax(hidden @ weight.T)[target]`` per row, in chunks of rows.

    Saves only the inputs and one log-sum-exp per row; the backward recomputes
    each chunk's logits, so peak memory is one chunk's logits, not all of them.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows):  # hidden (N, H), weight (V, H)
        logps = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logps)
        for start in range(0, hidden.shape[0], chunk_rows):
            rows = slice(start, start + chunk_rows)
            logits = (hidden[rows] @ weight.T).float()  # (n, V)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            logps[rows] = logits.gather(1, targets[rows, None]).squeeze(1) - lse[rows]
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk_rows = chunk_rows
        return logps

    @staticmethod
    def backward(ctx, grad_logps):  # (N,)
        hidden, weight, targets, lse = ctx.saved_tensors
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        grad_weight = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            if need_weight
            else None
        )
        for start in range(0, hidden.shape[0], ctx.chunk_rows):
            rows = slice(start, start + ctx.chunk_rows)
            probs = ((hidden[rows] @ weight.T).float() - lse[rows, None]).exp_()  # (n, V)
            # d logp[target] / d logits = onehot(target) - softmax
            grad_logits = probs.mul_(-grad_logps[rows, None])
            grad_logits.scatter_add_(1, targets[rows, None], grad_logps[rows, None].float())
            grad_logits = grad_logits.to(weight.dtype)
            if need_hidden:
                grad_hidden[rows] = grad_logits @ weight
            if need_weight:
                grad_weight += grad_logits.float().T @ hidden[rows].float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def token_logps(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_rows: int = _CHUNK_ROWS
) -> torch.Tensor:
    """Log-probability of ``targets`` under ``softmax(hidden @ weight.T)``, per row.

    Under autocast the matmuls run in the autocast dtype (the log-softmax always
    in fp32), which is where bf16 pays on a CPU with native bf16 instructions.

    Args:
        hidden: final hidden states of the scored positions, ``(N, H)``.
        weight: output-head weight, ``(V, H)``.
        targets: the next token at each position, ``(N,)``.
        chunk_rows: rows of logits computed at once.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        hidden, weight = hidden.to(dtype), weight.to(dtype)
    elif weight.dtype != hidden.dtype:
        weight = weight.to(hidden.dtype)
    return _ChunkedTokenLogps.apply(hidden, weight, targets, chunk_rows)


@dataclass
class ScoredTokens:
    """The log-probs of the scored tokens of a batch.

    Attributes:
        logps: ``(N,)`` fp32 log-probs of the scored tokens, in row-major order of ``mask``.
        mask: ``(B, T-1)`` bool, which next-token positions were scored.
    """

    logps: torch.Tensor
    mask: torch.Tensor

    def per_sequence(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-prob and scored-token count of each sequence, ``(B,)`` each."""
        rows = self.mask.nonzero()[:, 0]
        sums = torch.zeros(self.mask.shape[0], dtype=self.logps.dtype, device=self.logps.device)
        sums = sums.index_add(0, rows, self.logps)
        return sums, self.mask.sum(dim=1)


def _language_model(model):
    """The causal LM inside PEFT and DDP / FSDP / DeepSpeed wrappers."""
    inner = getattr(model, "module", model)  # DDP and DeepSpeed engines keep it in .module
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT


def scored_logps(model, input_ids, attention_mask, score_mask) -> ScoredTokens:
    """log pi of the tokens ``input_ids[:, 1:]`` where ``score_mask[:, 1:]`` is true.

    The backbone (``base_model_prefix`` of the PEFT base model) gives the final hidden
    states, and those of the scored positions go through the output head in chunks
    (:func:`token_logps`). A model inside a DDP / FSDP / DeepSpeed wrapper (``.module``)
    runs through the wrapper's forward instead (DDP arms its gradient reduction
    there), reading no logits but the last position's, and a forward hook on the
    backbone takes its hidden states. Calling the backbone alone is the fast path: the
    full causal-LM forward costs about half a step more per DPO step on a CPU
    (docs/benchmarks.md, Training).

    Args:
        model: a causal LM, possibly wrapped (PEFT, DDP, FSDP, DeepSpeed).
        input_ids: ``(B, T)`` token ids, right-padded.
        attention_mask: ``(B, T)``, 1 on real tokens.
        score_mask: ``(B, T)``, true on the tokens whose probability is wanted.
    """
    language_model = _language_model(model)
    backbone = getattr(language_model, language_model.base_model_prefix)
    if not hasattr(model, "module"):  # PEFT or plain: the backbone alone is the cheaper call
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state
        return _score(language_model, hidden, input_ids, score_mask)
    captured = []
    hook = backbone.register_forward_hook(
        lambda _module, _inputs, output: captured.append(output.last_hidden_state)
    )
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, use_cache=False)
    finally:
        hook.remove()
    return _score(language_model, captured[-1], input_ids, score_mask)


def _score(language_model, hidden, input_ids, score_mask) -> ScoredTokens:
    """The scored positions' final hidden states ``(B, T, H)`` through the output head."""
    mask = score_mask[:, 1:].bool()  # (B, T-1)
    weight = language_model.get_output_embeddings().weight
    if hasattr(weight, "full_tensor"):  # FSDP2 shards parameters as DTensors
        weight = weight.full_tensor()
    logps = token_logps(hidden[:, :-1][mask], weight, input_ids[:, 1:][mask])
    return ScoredTokens(logps=logps, mask=mask)


def right_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    """``(B, T)`` long tensor of rows padded on the right with ``value``."""
    width = max(len(row) for row in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def reply_batch(pairs: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict:
    """``input_ids`` / ``attention_mask`` / ``completion_mask`` of ``(prompt_ids, reply_ids)``
    rows, right-padded; ``completion_mask`` marks the reply tokens."""
    sequences = [prompt + reply for prompt, reply in pairs]
    return {
        "input_ids": right_pad(sequences, pad_token_id),
        "attention_mask": right_pad([[1] * len(s) for s in sequences], 0),
        "completion_mask": right_pad([[0] * len(p) + [1] * len(r) for p, r in pairs], 0),
    }


def reply_logps(
    model, pairs: list[tuple[list[int], list[int]]], *, pad_token_id: int, batch_size: int = 8
) -> list[float]:
    """log pi(reply | prompt) of each ``(prompt_ids, reply_ids)``, summed over the reply.

    Rows are scored in length order (little padding), without gradients, and
    returned in their order.
    """
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    sums = [0.0] * len(pairs)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            batch = reply_batch([pairs[i] for i in indices], pad_token_id)
            scored = scored_logps(
                model,
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["completion_mask"].to(device),
            )
            values, _ = scored.per_sequence()
            for index, value in zip(indices, values.float().cpu().tolist(), strict=True):
                sums[index] = value
    return sums


# -- the implicit reward ----------------------------------------------------------------


def implicit_reward(policy_logps, reference_logps, beta: float):
    """DPO's implicit reward ``beta * (log pi(y|x) - log ref(y|x))`` (floats or tensors)."""
    return beta * (policy_logps - reference_logps)


def is_tie(margin):
    """Whether a chosen-minus-rejected reward margin is a tie (floats or tensors)."""
    return abs(margin) <= TIE_TOLERANCE


def prefers_chosen(margin):
    """Whether a pair counts as correct: the chosen reward is higher by more than a tie.

    Ties count as wrong, never as half right, in training logs and in evaluation alike.
    """
    return margin > TIE_TOLERANCE
