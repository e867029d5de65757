"""Tool decisions for a small local model that has no native function calling (SmolLM2).

Before the normal reply, a short constrained decode answers one question: which tool, with which
arguments, or none. A llama.cpp grammar built from the offered tools' schemas lets the model write
only ``{"tool":"none"}`` or ``{"tool":"<function>","arguments":{...}}`` valid for that tool, so
the answer always parses. The prompt is few-shot (a 135M model follows examples far better than
instructions): examples for well-known firmware and server tools, a generic one for any other
tool, and plain questions that need none. The router runs on a llama.cpp context of its own, so
its long few-shot prefix stays cached and the chat context keeps its own cache: a plain turn pays
only for the user's words and about five forced tokens.

Everything but ``decide`` is pure (prompt and grammar text), tested without the model.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence

NONE = '{"tool":"none"}'
ANSWER_START = '{"tool":"'  # every answer starts so: written into the prompt, not decoded
# What the GGUF's chat template puts first when a conversation has no system message.
TEMPLATE_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MAX_TOKENS = 48  # the longest call the grammar allows in practice; a cut-off answer counts as none

# Requests that need no tool, shown between the tool examples so "none" is a habit, not an exception.
PLAIN_EXAMPLES = (
    "What is the capital of Italy?",
    "Tell me a story.",
    "What is three times three?",
    "Hello, how are you?",
    "Who painted the Mona Lisa?",
)
# Questions that use a tool's words but need no tool, by tool name: without them the model learns
# "a tool word means a tool" (90 % of such questions called one in benchmarks/tool_calling.py).
NEAR_MISSES: dict[str, tuple[str, ...]] = {
    "self.audio_speaker.set_volume": ("What is the volume of a cube?",),
    "self.screen.set_brightness": ("Why is the moon so bright?",),
    "self.get_device_status": ("What is the status of my flight?", "How loud is thunder?"),
    "get_time": ("What time do banks open?",),
    "end_conversation": ("How do you say goodbye in German?",),
}
# Requests for well-known tools (xiaozhi firmware and this server), by tool name.
KNOWN_EXAMPLES: dict[str, tuple[tuple[str, dict], ...]] = {
    "self.audio_speaker.set_volume": (("Set the volume to 40.", {"volume": 40}), ("Make it quieter, volume 15.", {"volume": 15})),
    "self.screen.set_brightness": (("Screen brightness 70, please.", {"brightness": 70}),),
    "self.get_device_status": (("How much battery is left?", {}), ("How loud is the speaker now?", {}),
                               ("Is the screen bright at the moment?", {})),
    "self.screen.set_theme": (("Switch to the dark theme.", {"theme": "dark"}),),
    "self.camera.take_photo": (("What do you see?", {"question": "What do you see?"}),),
    "get_time": (("Tell me the time, please.", {}), ("Which date is it?", {})),
    "end_conversation": (("Bye, see you later.", {}), ("Stop talking, that's all.", {})),
}


def _example_value(schema: dict):
    kind = schema.get("type")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if kind == "integer":
        low, high = schema.get("minimum", 0), schema.get("maximum", 100)
        return int(low + (high - low) * 0.4) if isinstance(low, int | float) and isinstance(high, int | float) else 40
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return True
    return "something"


def generic_example(function: str, parameters: dict) -> tuple[str, dict]:
    """An example request for a tool nobody wrote examples for, from its name and schema:
    ``self_light_set_color`` with ``color`` -> "Light set color something."."""
    words = [w for w in re.split(r"[_\-.]+", function) if w and w != "self"]
    properties = (parameters or {}).get("properties") or {}
    required = (parameters or {}).get("required") or list(properties)
    arguments = {name: _example_value(properties[name]) for name in required if name in properties}
    said = " ".join(words).capitalize()
    if arguments:
        said += " " + " ".join(str(v) for v in arguments.values())
    return said + ".", arguments


def _answer(function: str, arguments: dict) -> str:
    return json.dumps({"tool": function, "arguments": arguments}, separators=(",", ":"), ensure_ascii=False)


def aliases(specs: Sequence[dict]) -> dict[str, str]:
    """Short names the router shows the model (``set_volume`` for ``self_audio_speaker_set_volume``):
    a 135M model picks a short, plain name far more reliably. alias -> function name; a name that
    would collide keeps its full form."""
    out: dict[str, str] = {}
    shorts = {}
    for spec in specs:
        name = spec["function"]["name"]
        parts = [p for p in re.split(r"[_.]", name) if p]
        short = "_".join(parts[-2:]) if len(parts) > 2 and parts[0] == "self" else name
        shorts.setdefault(short, []).append(name)
    for short, names in shorts.items():
        for name in names:
            out[short if len(names) == 1 else name] = name
    return out


def _first_sentence(text: str, limit: int = 90) -> str:
    sentence = re.split(r"(?<=[.!?])\s", (text or "").strip(), maxsplit=1)[0]
    return sentence[:limit]


def _known_key(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "_", name)


_KNOWN = {_known_key(name): examples for name, examples in KNOWN_EXAMPLES.items()}
_NEAR = {_known_key(name): examples for name, examples in NEAR_MISSES.items()}


def router_messages(specs: Sequence[dict]) -> list[dict]:
    """The few-shot prefix (system + example turns) for these tools, under their aliases."""
    lines, per_tool, near = [], [], []
    for alias, fname in aliases(specs).items():
        near += _NEAR.get(fname, ())
        function = next(s["function"] for s in specs if s["function"]["name"] == fname)
        params = function.get("parameters") or {}
        args = ", ".join((params.get("properties") or {}).keys())
        lines.append(f"- {alias}({args}): {_first_sentence(function.get('description', ''))}")
        per_tool.append([(said, _answer(alias, arguments))
                         for said, arguments in _KNOWN.get(fname) or (generic_example(alias, params),)])
    # Round robin (every tool's first example, then every second one): no tool's examples all sit
    # next to the question, where a small model copies them.
    examples = [group[i] for i in range(max(map(len, per_tool), default=0)) for group in per_tool if i < len(group)]
    system = ("You pick the tool a voice assistant needs for the user's request, or none. "
              "Most requests need none.\nTools:\n" + "\n".join(lines))
    messages = [{"role": "system", "content": system}]
    plain = [text for pair in zip(PLAIN_EXAMPLES, near + [None] * len(PLAIN_EXAMPLES)) for text in pair if text]
    plain += near[len(PLAIN_EXAMPLES):]
    # Interleave: tool, plain, tool, plain... so neither kind of answer dominates the recent context.
    for index, (said, answer) in enumerate(examples):
        messages += [{"role": "user", "content": said}, {"role": "assistant", "content": answer}]
        if index < len(plain):
            messages += [{"role": "user", "content": plain[index]}, {"role": "assistant", "content": NONE}]
    for said in plain[len(examples):]:
        messages += [{"role": "user", "content": said}, {"role": "assistant", "content": NONE}]
    return messages


# Words that say nothing about which tool is meant (function words, generic verbs).
STOPWORDS = frozenset("""
a about after again all also am an and any are as ask at be been being but by can change could current did do does doing
done down e.g etc for from get give go going has have he her here hi how i if in into is it its it's just know let
like make me more most much my need no not now of off ok okay on one or our out over please put right say says set she
answer answering question questions first step provide provides information real including condition example
should show so some someone something tell than thank thanks that the their them then there these they thing this
those to too tool turn up us use user very want was way we what when where which who why will with would you your
""".split())


def _stem(word: str) -> str:
    """A crude English stem, enough to meet "brighter"/"brightness", "louder"/"loud", "dims"/"dim"."""
    for suffix in ("ness", "est", "er", "ing", "ed", "ly", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> set[str]:
    words = [w for w in re.findall(r"[a-z]+", (text or "").lower().replace("'", "")) if len(w) > 2]
    return {_stem(w) for w in words if w not in STOPWORDS and _stem(w) not in STOPWORDS}


def vocabulary(spec: dict) -> set[str]:
    """The words that may point at a tool: its name, description, parameter names and examples."""
    function = spec["function"]
    text = [function["name"].replace("_", " "), function.get("description", "")[:400],
            " ".join((function.get("parameters") or {}).get("properties", {}) or {})]
    text += [said for said, _ in _KNOWN.get(function["name"], ())]
    return content_words(" ".join(text)) - {"self"}


def candidates(user_text: str, specs: Sequence[dict]) -> list[dict]:
    """The offered tools whose vocabulary the user's words touch. Most plain questions touch none,
    and then the model is not asked at all: no cost, and no chance of a wrong call."""
    said = content_words(user_text)
    return [spec for spec in specs if said & vocabulary(spec)] if said else []


_UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                      "fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * i for i, w in enumerate("_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()) if i > 1}
_NUMBER_WORDS = re.compile(r"\b(?:(%s)(?:[ -](%s))?|(%s)|(a |one )?hundred)\b" % (
    "|".join(_TENS), "|".join(list(_UNITS)[1:10]), "|".join(_UNITS)), re.I)


def digits(text: str) -> str:
    """Number words as digits ("seventy five" -> "75"): the model copies digits into arguments
    reliably, but turns "seventy" into 78 as often as 70. ASR writes either."""
    def number(match: re.Match) -> str:
        tens, unit, single, _ = match.groups()
        if tens:
            return str(_TENS[tens.lower()] + (_UNITS[unit.lower()] if unit else 0))
        if single:
            return str(_UNITS[single.lower()])
        return "100"

    return _NUMBER_WORDS.sub(number, text)


def chatml_prompt(messages: Sequence[dict], answer_start: str = ANSWER_START) -> str:
    """SmolLM2's chat template (ChatML, as its GGUF's template renders it: the same tokens, so
    llama.cpp's cached prefix is shared with ``create_chat_completion``) with the assistant's
    answer begun by ``answer_start``, so a forced opening costs no decode steps."""
    if not messages or messages[0].get("role") != "system":
        messages = [{"role": "system", "content": TEMPLATE_SYSTEM_PROMPT}, *messages]
    turns = "".join(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages)
    return f"{turns}<|im_start|>assistant\n{answer_start}"


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal uses JSON's escapes


def router_grammar(specs: Sequence[dict], allowed: Sequence[str] | None = None) -> str:
    """GBNF for what follows ``ANSWER_START``: ``none"}`` or one offered function (of ``allowed``
    function names, if given) with arguments valid for its schema."""
    from llama_cpp.llama_grammar import SchemaConverter

    converter = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    alternatives = [_literal(NONE[len(ANSWER_START):])]
    for index, (alias, fname) in enumerate(aliases(specs).items()):
        if allowed is not None and fname not in allowed:
            continue
        function = next(s["function"] for s in specs if s["function"]["name"] == fname)
        schema = function.get("parameters") or {"type": "object", "properties": {}}
        rule = converter.visit(_required_all(schema), f"args{index}")
        prefix = json.dumps(alias)[1:] + ',"arguments":'
        alternatives.append(f'{_literal(prefix)} {rule} {_literal("}")}')
    grammar = converter.format_grammar()
    grammar = re.sub(r'^space ::= .*$', 'space ::= ""', grammar, flags=re.M)  # compact: fewer tokens to decode
    return f"root ::= {' | '.join(alternatives)}\n{grammar}"


def _required_all(schema: dict) -> dict:
    """Ask for every listed argument: a small model fills optional ones poorly, but skipping them
    is worse (a tool called without its value)."""
    schema = dict(schema)
    if schema.get("type", "object") == "object" and isinstance(schema.get("properties"), dict):
        schema["required"] = list(schema["properties"])
        schema.setdefault("additionalProperties", False)
    return schema


def settled(text: str, specs: Sequence[dict]) -> str | None:
    """The whole answer once the rest is forced by the grammar: after ``{"tool":"none`` or the
    name of a tool without parameters nothing is left to choose, so decoding can stop there
    (each forced token still costs a full grammar-checked decode step)."""
    if text.startswith('{"tool":"none'):
        return NONE
    match = re.match(r'\{"tool":"([^"]+)",', text)
    if match:
        function = aliases(specs).get(match.group(1))
        spec = next((s for s in specs if s["function"]["name"] == function), None)
        if spec is not None and not ((spec["function"].get("parameters") or {}).get("properties")):
            return _answer(match.group(1), {})
    return None


def parse_decision(text: str, names: dict[str, str] | None = None) -> tuple[str, dict] | None:
    """(function, arguments) from the router's output, None for "none" or anything unreadable.
    ``names``: alias -> function name (``aliases``)."""
    try:
        decision = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(decision, dict) or decision.get("tool") in (None, "none"):
        return None
    arguments = decision.get("arguments")
    tool = str(decision["tool"])
    return (names or {}).get(tool, tool), arguments if isinstance(arguments, dict) else {}
