import numpy as np
import pytest

from stream_workers.synthesis.segmentation import join_audio, split_text


def test_short_text_is_one_segment() -> None:
    assert split_text("  Hello there.  ", 50) == ["Hello there."]


def test_sentences_are_packed_up_to_the_bound_and_cut_only_at_boundaries() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    segments = split_text(text, 32)
    assert segments == ["One two three. Four five six!", "Seven eight nine?", "Ten eleven twelve."]
    assert all(len(s) <= 32 for s in segments)
    assert " ".join(segments) == text


def test_every_segment_ends_a_sentence_when_sentences_fit() -> None:
    sentences = [f"This is sentence number {i} of the note." for i in range(40)]
    text = " ".join(sentences)
    segments = split_text(text, 120)
    assert len(segments) > 1
    assert all(len(s) <= 120 for s in segments)
    assert all(s.endswith(".") for s in segments)
    assert " ".join(segments) == text


def test_an_overlong_sentence_is_cut_at_clauses_then_words() -> None:
    sentence = "first clause here, second clause here; " + "word " * 30 + "end."
    segments = split_text(sentence, 40)
    assert all(len(s) <= 40 for s in segments)
    assert " ".join(segments).split() == sentence.split()
    assert segments[0] == "first clause here, second clause here;"


def test_a_giant_word_is_cut_mid_word_as_a_last_resort() -> None:
    segments = split_text("x" * 95, 40)
    assert [len(s) for s in segments] == [40, 40, 15]


def test_bound_must_be_positive() -> None:
    with pytest.raises(ValueError):
        split_text("hi", 0)


def test_joined_audio_keeps_order_and_has_no_step_at_the_seams() -> None:
    sr = 8000
    a = np.full(800, 0.8, dtype=np.float32)  # a hard DC level: a bare cut would click
    b = np.full(800, -0.8, dtype=np.float32)
    joined = join_audio([a, b], sr, fade_ms=5, gap_ms=10)
    assert len(joined) == 800 + 80 + 800
    assert joined[400] == pytest.approx(0.8) and joined[-400] == pytest.approx(-0.8)
    # the largest sample-to-sample jump is a fade step, far below the 1.6 a hard cut would make
    assert float(np.max(np.abs(np.diff(joined)))) < 0.05
    assert joined[799] == pytest.approx(0.0, abs=1e-6) and joined[880] == pytest.approx(0.0, abs=1e-6)


def test_one_part_is_returned_as_is() -> None:
    a = np.linspace(-1, 1, 100, dtype=np.float32)
    assert np.array_equal(join_audio([a], 8000), a)
