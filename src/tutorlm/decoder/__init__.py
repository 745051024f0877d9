"""Step decoding: ragged forward passes with a KV cache per request slot
(:mod:`tutorlm.decoder.llama`), and the rule that schedules replies onto them
(:mod:`tutorlm.decoder.schedule`), shared by serving and bulk generation on a CPU."""

from tutorlm.decoder.llama import (
    DECODE_MAX_ROWS,
    SUPPORTED_TYPES,
    Segment,
    StepDecoder,
    unsupported_reason,
)
from tutorlm.decoder.schedule import DEFAULT_PREFILL_CHUNK, Reply, Scheduler, choose_token

__all__ = [
    "DECODE_MAX_ROWS",
    "DEFAULT_PREFILL_CHUNK",
    "SUPPORTED_TYPES",
    "Reply",
    "Scheduler",
    "Segment",
    "StepDecoder",
    "choose_token",
    "unsupported_reason",
]
