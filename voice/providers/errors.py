"""Failures of a provider while serving a request (as opposed to ``base.ProviderUnavailable``,
which means it cannot start at all)."""


class LLMError(RuntimeError):
    """The language model failed mid-request: HTTP error, timeout, or a reply we cannot parse."""
