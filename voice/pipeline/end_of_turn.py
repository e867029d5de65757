"""Whether a paused utterance is a finished turn: from how it sounded and what was said.

The listener reports a ``Pause`` after a short silence with the end-of-turn model's probability
(``voice/providers/turn/smart_turn.py``); the speculative transcript of the pause
(``voice/pipeline/speculation.py``) adds what was said. A turn ends before the full silence only
when both agree: the model hears a finished sentence and the words do not stop on one that needs
a continuation ("I would like to know", "the capital of"). Anything else waits for the full
silence, as without a model, so a mid-sentence pause is never cut earlier than before.
"""
from __future__ import annotations

import logging
import re

log = logging.getLogger(__name__)

# English words a sentence rarely ends on: articles and determiners, prepositions, conjunctions,
# subject pronouns, and verbs that announce what comes next. Erring on the side of waiting only
# costs the full silence ("I don't know." waits), never a cut. A heuristic for the bundled English
# ASR; other languages rely on the model alone.
DANGLING = frozenset("""
a an the this these those my your his her its our their some any every no
to of in on at by for from with about into onto over under after before between than as like
and or but so because if when while whether although though unless until
i he she we they
know tell wonder think mean want need ask say show give find let
""".split())

_WORDS = re.compile(r"[\w']+")


def words_look_complete(text: str) -> bool:
    """True unless the transcript trails off: ends on "...", a comma or dash, or a dangling word."""
    text = text.strip()
    if not text or text.endswith(("...", "…", ",", "-", "—", ";", ":")):
        return False
    words = _WORDS.findall(text.lower())
    return bool(words) and words[-1] not in DANGLING


def ends_turn(probability: float | None, transcript: str, threshold: float) -> bool:
    """Answer now, before the full silence? Only on a confident model and a complete-looking text."""
    return probability is not None and probability >= threshold and words_look_complete(transcript)


def load_model():
    """The configured end-of-turn model, or None (silence alone ends turns) if it cannot load: a
    missing model file costs speed, never the device's session (``manage.py check`` names it)."""
    from voice.providers import registry
    from voice.providers.base import ProviderUnavailable

    try:
        return registry.get_turn()
    except ProviderUnavailable as exc:
        log.warning("end-of-turn model unavailable, silence alone ends turns: %s", exc)
        return None
