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


# --- Chinese ---------------------------------------------------------------------------------------


def test_the_first_chinese_clause_is_cut_at_a_comma_once_it_has_six_characters():
    """The first audio starts after one short clause, as in English: characters count 1.5 a word."""
    deltas = ["今天", "北京天气", "很好，阳", "光明媚，气温", "二十度。适合出门散步哦😊"]
    assert feed_all(SentenceSplitter(), deltas) == ["今天北京天气很好，", "阳光明媚，气温二十度。", "适合出门散步哦"]


def test_a_chinese_clause_too_short_to_say_alone_waits_for_the_next_end():
    assert feed_all(SentenceSplitter(), ["好的，", "我来帮你查一下。"]) == ["好的，我来帮你查一下。"]


def test_the_first_piece_leaves_as_soon_as_its_chinese_comma_arrives():
    splitter = SentenceSplitter()
    assert splitter.feed("今天北京天气很好") == []
    assert splitter.feed("，阳光") == ["今天北京天气很好，"]


def test_a_long_later_chinese_sentence_is_cut_at_a_comma_after_fifteen_characters():
    pieces = feed_all(SentenceSplitter(), ["你好！", "北京是中国的首都也是一座历史悠久的城市，有很多博物馆和公园。"])
    assert pieces == ["你好！", "北京是中国的首都也是一座历史悠久的城市，", "有很多博物馆和公园。"]
    # shorter later clauses stay whole
    assert feed_all(SentenceSplitter(), ["你好！", "北京很大，很美。"]) == ["你好！", "北京很大，很美。"]


def test_every_form_of_chinese_sentence_punctuation_ends_a_piece():
    for end in "。｡！？；﹗﹖﹔":
        assert feed_all(SentenceSplitter(), [f"好{end}再见"]) == [f"好{end}", "再见"], end
    for comma in "，、､﹐﹑：":
        assert feed_all(SentenceSplitter(), [f"我们今天一起去{comma}公园"]) == [f"我们今天一起去{comma}", "公园"], comma


def test_a_full_width_period_ends_a_sentence_but_not_a_number():
    assert feed_all(SentenceSplitter(), ["价格是３．５元．好"]) == ["价格是３．５元．", "好"]


def test_a_closing_quote_stays_with_its_sentence():
    assert feed_all(SentenceSplitter(), ["他说：“你好。”然后走了。"]) == ["他说：“你好。”", "然后走了。"]


def test_mixed_chinese_and_english_counts_both():
    assert feed_all(SentenceSplitter(), ["OK，我们现在", "走吧，Let us go now, friend."]) == ["OK，我们现在走吧，", "Let us go now, friend."]


def test_a_long_first_sentence_is_spoken_after_a_few_complete_words():
    splitter = SentenceSplitter(first_clause_max_words=6)
    pieces = feed_all(splitter, ["The tallest mountain in the whole wor", "ld is Mount Everest, in Nepal. It is very high."])
    assert pieces == ["The tallest mountain in the whole", "world is Mount Everest, in Nepal.", "It is very high."]
    # a short first sentence is not cut; 0 waits for punctuation however long it takes
    assert feed_all(SentenceSplitter(first_clause_max_words=6), ["The capital is Paris. Yes."]) == ["The capital is Paris.", "Yes."]
    assert feed_all(SentenceSplitter(first_clause_max_words=0), ["One two three four five six seven eight nine."]) == [
        "One two three four five six seven eight nine."]
