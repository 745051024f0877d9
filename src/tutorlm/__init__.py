"""tutorlm: from public STEM data and course notes to a small, evaluated, served tutor model."""

import logging
import warnings

__version__ = "0.1.0"

# torchao (imported by transformers whenever it is installed) logs that its CUDA-only
# extensions do not load without CUDA, and torch warns about torchao's enum
# registration: noise on every command, never actionable by a user.
logging.getLogger("torchao").setLevel(logging.ERROR)
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)

# transformers 5 deprecates `is_gradient_checkpointing`, which TRL and peft still read on
# every trainer start; the warning is theirs to fix and says nothing about a run.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated")
