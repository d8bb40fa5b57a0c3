"""Where tokens come from: the in-process transformers model (``local``) and remote OpenAI-compatible engines.

The interface (:mod:`shared_core.backends.base`): ``encode``/``decode``, ``render`` (the chat template),
``propose`` (n continuations of a token-id prefix), ``top_next`` (the top-k next tokens), and, in
process only, ``next_logits`` with a KV cache (:class:`~shared_core.backends.local.LocalBackend`).
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
