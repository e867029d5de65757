"""Failures of a provider while serving a request (as opposed to ``base.ProviderUnavailable``,
which means it cannot start at all). The turn catches them, apologises and ends with ``tts stop``."""


class LLMError(RuntimeError):
    """The language model failed mid-request: HTTP error, timeout, or a reply we cannot parse."""


class CircuitOpen(LLMError):
    """The LLM server failed too often in a row: requests fail at once, without waiting on it,
    until the cool-down has passed (see ``voice.providers.breaker``)."""


class TTSError(RuntimeError):
    """The speech engine failed mid-request: a remote service unreachable, slow, or answering
    with something we cannot decode."""
