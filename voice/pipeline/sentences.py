"""Cuts a streamed LLM reply into pieces worth synthesising.

Speech can start only when a piece is complete, so the first piece may end at a comma once it has a
few words (fast first audio); later pieces end at sentence punctuation, where prosody is best, or at
a comma once they have ten words: a long sentence would otherwise keep the device waiting after the
short first clause (on 2 cores with five answers at once, a 2 s gap every time; none with this cut). A
period only ends a sentence when followed by a space or the end of the reply ("3.5" stays whole).

Chinese (and Japanese) is written without spaces, so its characters are counted instead of words,
1.5 to a word (about how long a Chinese word is, and how long it takes to say): the first clause
may end at "，" or "、" once it has six characters, a later one at fifteen. Its punctuation, in the
full-width and small forms too, ends pieces as the ASCII one does; a closing quote or bracket
already received stays with the sentence it closes.

A first piece with no punctuation yet is cut after ``first_clause_max_words`` complete words
(XIAOZHI_FIRST_CLAUSE_MAX_WORDS): the device hears the start of a long first sentence while the
rest is still being written.
"""
from __future__ import annotations

import re

from voice.protocol import strip_emoji

_HARD_ENDS = set("!?;\n" "。｡！？；" "﹗﹖﹔")
_SOFT_ENDS = set(",:" "，、､：" "﹐﹑﹕")
_FULL_STOP = "．"  # full-width period: a sentence end unless a digit follows ("３．５")
_CLOSERS = set("\"')]}" "”’」』）】》〉］｝")
_MARKDOWN = re.compile(r"[*_`#>|~]+")
_SPACES = re.compile(r"\s+")
_SPEAKABLE = re.compile(r"[0-9A-Za-z\u00c0-\u024f\u0400-\u04ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")
CJK_CHARS_PER_WORD = 1.5


def clean_for_speech(text: str) -> str:
    """Drop markdown marks and emoji that a voice would read aloud or stumble over."""
    return _SPACES.sub(" ", _MARKDOWN.sub(" ", strip_emoji(text))).strip()


def word_count(text: str) -> float:
    """Words of ``text``: space-separated words, plus its Chinese/Japanese characters 1.5 a word."""
    cjk = len(_CJK.findall(text))
    return len(_CJK.sub(" ", text).split()) + cjk / CJK_CHARS_PER_WORD


class SentenceSplitter:
    def __init__(self, first_clause_min_words: int = 4, later_clause_min_words: int = 10, max_chars: int = 240,
                 first_clause_max_words: int | None = None):
        """``first_clause_max_words``: None reads XIAOZHI_FIRST_CLAUSE_MAX_WORDS; 0 never cuts without punctuation."""
        if first_clause_max_words is None:
            from django.conf import settings

            first_clause_max_words = getattr(settings, "XIAOZHI_FIRST_CLAUSE_MAX_WORDS", 0)
        self.first_clause_max_words = first_clause_max_words
        self.first_clause_min_words = first_clause_min_words
        self.later_clause_min_words = later_clause_min_words
        self.max_chars = max_chars
        self._pending = ""
        self._emitted = 0

    def feed(self, delta: str) -> list[str]:
        self._pending += delta
        pieces = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            piece, self._pending = self._pending[:cut], self._pending[cut:]
            self._keep(piece, pieces)
        return pieces

    def flush(self) -> list[str]:
        pieces: list[str] = []
        self._keep(self._pending, pieces)
        self._pending = ""
        return pieces

    def _keep(self, piece: str, pieces: list[str]) -> None:
        text = clean_for_speech(piece)
        if _SPEAKABLE.search(text):
            pieces.append(text)
            self._emitted += 1

    def _find_cut(self) -> int | None:
        text = self._pending
        for i, ch in enumerate(text):
            if ch in _HARD_ENDS:
                return self._past_closers(i + 1)
            if ch in ".．" and i + 1 < len(text) and not text[i + 1].isdigit() and (ch == _FULL_STOP or text[i + 1].isspace()):
                return self._past_closers(i + 1)
            if ch in _SOFT_ENDS:
                least = self.first_clause_min_words if self._emitted == 0 else self.later_clause_min_words
                if word_count(text[:i]) >= least:
                    return self._past_closers(i + 1)
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            return space if space > 0 else self.max_chars
        if self._emitted == 0 and self.first_clause_max_words:
            space = text.rstrip().rfind(" ")  # the words before it are complete; the last may not be
            if space > 0 and word_count(text[:space]) >= self.first_clause_max_words:
                return space
        return None

    def _past_closers(self, cut: int) -> int:
        """Past the closing quotes and brackets right after an end (』。” ends there)."""
        while cut < len(self._pending) and self._pending[cut] in _CLOSERS:
            cut += 1
        return cut
