"""Failures of a provider while serving a request (as opposed to ``base.ProviderUnavailable``,
which means it cannot start at all). The turn catches them, apologises and ends with ``tts stop``."""


class ProviderError(RuntimeError):
    """A provider failed while serving a request."""


class LLMError(ProviderError):
    """The language model failed mid-request: HTTP error, timeout, or a reply we cannot parse."""


class ASRError(ProviderError):
    """The speech recogniser failed: a remote service unreachable, slow, or answering with
    something we cannot read."""


class TTSError(ProviderError):
    """The speech engine failed mid-request: a remote service unreachable, slow, or answering
    with something we cannot decode."""


class CircuitOpen(ProviderError):
    """A remote service (LLM, ASR or TTS server) failed too often in a row: requests fail at once,
    without waiting on it, until the cool-down has passed (see ``voice.providers.breaker``)."""


class VisionError(ProviderError):
    """The vision model failed on a photo question: a remote service unreachable, slow, or
    answering with something we cannot read. The device hears an apology instead."""
