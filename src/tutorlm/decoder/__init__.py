"""Step decoding: ragged forward passes with a KV cache per request slot, for serving
many replies at once on a CPU (:mod:`tutorlm.decoder.llama`)."""

from tutorlm.decoder.llama import (
    DECODE_MAX_ROWS,
    SUPPORTED_TYPES,
    Segment,
    StepDecoder,
    unsupported_reason,
)

__all__ = ["DECODE_MAX_ROWS", "SUPPORTED_TYPES", "Segment", "StepDecoder", "unsupported_reason"]
