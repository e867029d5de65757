from voice.pipeline.sentences import SentenceSplitter, clean_for_speech


def feed_all(splitter, deltas):
    out = []
    for d in deltas:
        out += splitter.feed(d)
    return out + splitter.flush()


def test_first_piece_is_cut_at_a_comma_once_it_has_a_few_words():
    pieces = feed_all(SentenceSplitter(), ["Well, the weather", " today is sunny, warm", " and calm. See", " you later!"])
    assert pieces == ["Well, the weather today is sunny,", "warm and calm.", "See you later!"]


def test_later_short_clauses_wait_for_sentence_punctuation():
    pieces = feed_all(SentenceSplitter(), ["One two three four, five. ", "Six, seven, eight nine ten, eleven."])
    assert pieces == ["One two three four,", "five.", "Six, seven, eight nine ten, eleven."]


def test_a_long_later_sentence_is_cut_at_a_comma_so_the_next_audio_comes_in_time():
    """Under load the LLM may take longer for a long sentence than the device needs to play the
    short first clause: the piece ends at a comma once it has ten words."""
    long_sentence = "Paris is the capital and the largest city of France, with many museums and parks."
    pieces = feed_all(SentenceSplitter(), ["Sure thing, my friend. ", long_sentence])
    assert pieces == ["Sure thing, my friend.", "Paris is the capital and the largest city of France,",
                      "with many museums and parks."]


def test_a_decimal_point_does_not_end_a_sentence():
    assert feed_all(SentenceSplitter(), ["It costs 3", ".5 dollars. Cheap"]) == ["It costs 3.5 dollars.", "Cheap"]


def test_chinese_punctuation_ends_sentences():
    assert feed_all(SentenceSplitter(), ["你好！今天天气", "很好。"]) == ["你好！", "今天天气很好。"]


def test_pieces_without_speakable_text_are_dropped():
    assert feed_all(SentenceSplitter(), ["Hi! 😊 ... ", "**"]) == ["Hi!"]


def test_a_run_on_reply_is_cut_before_it_grows_unbounded():
    pieces = feed_all(SentenceSplitter(max_chars=40), ["word " * 30])
    assert all(len(p) <= 40 for p in pieces) and " ".join(pieces).split() == ["word"] * 30


def test_markdown_and_emoji_are_not_read_aloud():
    assert clean_for_speech("**Sure!** 😀 Here is `code`") == "Sure! Here is code"


def test_a_long_first_sentence_is_spoken_after_a_few_complete_words():
    splitter = SentenceSplitter(first_clause_max_words=6)
    pieces = feed_all(splitter, ["The tallest mountain in the whole wor", "ld is Mount Everest, in Nepal. It is very high."])
    assert pieces == ["The tallest mountain in the whole", "world is Mount Everest, in Nepal.", "It is very high."]
    # a short first sentence is not cut; 0 waits for punctuation however long it takes
    assert feed_all(SentenceSplitter(first_clause_max_words=6), ["The capital is Paris. Yes."]) == ["The capital is Paris.", "Yes."]
    assert feed_all(SentenceSplitter(first_clause_max_words=0), ["One two three four five six seven eight nine."]) == [
        "One two three four five six seven eight nine."]
