"""Where tokens come from: the in-process transformers model (``local``) and remote OpenAI-compatible engines.

Every backend declares what it can do (:mod:`shared_core.backends.capabilities`: ``logits``,
``samples``, ``top_logprobs``, ``prompt_logprobs``) and every strategy what it needs
(``Strategy.needs``); :func:`~shared_core.backends.capabilities.check_capabilities` refuses a strategy a
backend cannot serve. Remote handles come from :func:`shared_core.backends.remote.connect_model`
(re-exported as ``shared_core.connect_model``); the strategies they serve are in
:mod:`shared_core.backends.remote_decoding`.
"""

from shared_core.backends.capabilities import (
    CAPABILITIES,
    LOCAL_CAPABILITIES,
    LOGITS,
    PROMPT_LOGPROBS,
    REMOTE_CAPABILITIES,
    SAMPLES,
    TOP_LOGPROBS,
    check_capabilities,
)

__all__ = [
    "CAPABILITIES",
    "LOCAL_CAPABILITIES",
    "LOGITS",
    "PROMPT_LOGPROBS",
    "REMOTE_CAPABILITIES",
    "SAMPLES",
    "TOP_LOGPROBS",
    "check_capabilities",
]
