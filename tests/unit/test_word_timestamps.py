"""Word timestamps (issue 23): Piper's phoneme durations mapped to the words of the text, segments offset into the
joined audio, the result carried to storage, and subtitles made of them. The Piper tests run the real voice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from schemas.events import TIMESTAMPS_ATTRIBUTE, SynthesisRequest, SynthesisResult
from stream_workers.completion.status import completion_fields
from stream_workers.completion.storage import Storer
from stream_workers.engine.base import SynthesisInput
from stream_workers.engine.word_timing import TimedPhoneme, word_times
from stream_workers.synthesis.segmentation import GAP_MS, join_audio, segment_offsets, split_text
from stream_workers.synthesis.synthesizer import Job, Segment, Synthesizer
from voicenote import captions
from voicenote.audio import to_wav
from voicenote.captions import WordTime
from voicenote.settings import StorageSettings
from voicenote.storage.local import LocalAudioStore

RATE = 22050


def _spoken(symbols: str, each: int = 100) -> list[TimedPhoneme]:
    return [TimedPhoneme(s, i * each, (i + 1) * each) for i, s in enumerate(symbols)]


def test_words_take_the_time_of_their_own_phonemes() -> None:
    # "hi there" said as ^ h a ɪ ␠ ð ɛ ɹ . $ (markers, space and stop are timed but belong to no word).
    spoken = _spoken("^haɪ ðˈɛɹ.$")
    words = word_times(["hi", "there."], [list("haɪ"), list("ðˈɛɹ.")], spoken, sample_rate=1000)
    assert [w.word for w in words] == ["hi", "there."]
    assert (words[0].start, words[0].end) == (0.1, 0.4)  # h..ɪ: phonemes 1-3
    assert (words[1].start, words[1].end) == (0.5, 0.9)  # ð..ɹ, the stress mark inside, not the stop


def test_merged_rewritten_and_silent_words_still_come_out_in_order() -> None:
    # espeak ran "test... okay" together and said "a" as ɐ in context (eɪ alone); a lone dash has no sound.
    spoken = _spoken("^ɐ tɛstoʊkeɪ$")
    words = word_times(["a", "—", "test...", "okay"], [list("eɪ"), [], list("tɛst"), list("oʊkeɪ")], spoken, 1000)
    assert [w.word for w in words] == ["a", "test...", "okay"]
    assert words[1].end == words[2].start  # the merge is cut where the sounds of "okay" begin
    assert all(a.end <= b.start for a, b in zip(words, words[1:], strict=False))
    assert all(w.end >= w.start for w in words)


def test_segment_offsets_are_where_join_audio_puts_each_segment() -> None:
    parts = [np.full(n, 0.5, dtype=np.float32) for n in (3000, 1200, 5000)]
    joined = join_audio(parts, RATE)
    offsets = segment_offsets([len(p) for p in parts], RATE)
    gap = int(RATE * GAP_MS / 1000)
    assert offsets == [0, 3000 + gap, 3000 + gap + 1200 + gap]
    assert offsets[-1] + len(parts[-1]) == len(joined)
    for at, part in zip(offsets, parts, strict=True):
        assert np.all(joined[at + 200 : at + len(part) - 200] == 0.5)  # the segment itself, past the fades
    assert np.all(joined[offsets[1] - gap : offsets[1]] == 0.0)  # the pause before it
    assert segment_offsets([4000], RATE) == [0]  # one segment: no pause


def test_vtt_and_srt_parse_and_keep_the_words() -> None:
    words = [WordTime(w, i * 0.4, i * 0.4 + 0.3) for i, w in enumerate("One two three four five six seven eight. Nine ten.".split())]
    vtt = captions.to_vtt(words)
    assert vtt.startswith("WEBVTT\n\n")
    cues = _parse_cues(vtt, ".")
    assert " ".join(text for _, _, text in cues) == " ".join(w.word for w in words)
    assert cues[0][2] == "One two three four five six seven"  # at most seven words a cue
    assert cues[1][2] == "eight."  # a sentence ends its cue
    assert all(a[1] <= b[0] for a, b in zip(cues, cues[1:], strict=False)) and all(s < e for s, e, _ in cues)
    srt = captions.to_srt(words)
    assert _parse_cues(srt, ",") == cues
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,700\n")
    assert captions.loads(captions.dumps(words)) == [WordTime(w.word, round(w.start, 3), round(w.end, 3)) for w in words]


def _parse_cues(text: str, separator: str) -> list[tuple[float, float, str]]:
    clock = rf"(\d\d):(\d\d):(\d\d){re.escape(separator)}(\d\d\d)"
    out = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        if lines == ["WEBVTT"]:
            continue
        assert lines[0].isdigit()
        m = re.fullmatch(rf"{clock} --> {clock}", lines[1])
        assert m, lines[1]
        g = [int(x) for x in m.groups()]
        out.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000, " ".join(lines[2:])))
    return out


# --- the real Piper voice ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def piper():  # type: ignore[no-untyped-def]
    pytest.importorskip("onnx")
    from stream_workers.engine.piper_engine import PiperEngine

    return PiperEngine.joe(threads=1, sessions=1)


def _check(words: list[WordTime], text: str, duration: float) -> None:
    assert [w.word for w in words] == text.split()
    assert words[0].start >= 0.0 and words[-1].end <= duration + 1e-6
    assert words[-1].end >= duration - 0.35  # only the voice's trailing breath is after the last word
    assert words[0].start <= 0.35
    for a, b in zip(words, words[1:], strict=False):
        assert a.start <= a.end <= b.start <= b.end  # monotonic, never overlapping
    assert all(w.end - w.start > 0.02 for w in words if any(c.isalnum() for c in w.word))


def test_piper_times_every_word_of_the_text(piper) -> None:  # type: ignore[no-untyped-def]
    text = "Hello, world! Dr. Smith paid $1,234 on 3/4/2021. It's a don't-stop test... Okay?"
    result = piper.synthesize_batch([SynthesisInput("j#0", text, timestamps=True)])[0]
    assert result.ok and result.words is not None
    _check(result.words, text, len(result.audio) / piper.sample_rate)
    by_word = {w.word: w for w in result.words}
    # Numbers are read as several words: "$1,234" lasts far longer than "paid".
    assert by_word["$1,234"].end - by_word["$1,234"].start > 3 * (by_word["paid"].end - by_word["paid"].start)
    assert piper.synthesize_batch([SynthesisInput("j#0", text)])[0].words is None  # not asked: not computed


def test_the_silence_between_sentences_falls_between_their_words(piper) -> None:  # type: ignore[no-untyped-def]
    text = "The first sentence ends here. Then a second one starts."
    result = piper.synthesize_batch([SynthesisInput("j#0", text, timestamps=True)])[0]
    words, audio, rate = result.words, result.audio, piper.sample_rate
    assert words is not None
    _check(words, text, len(audio) / rate)
    here, then = words[4], words[5]
    assert (here.word, then.word) == ("here.", "Then")

    def rms(a: float, b: float) -> float:
        return float(np.sqrt(np.mean(audio[int(a * rate) : int(b * rate)] ** 2)))

    pause = (then.start - here.end)
    assert pause > 0.1  # the sentence break is a pause between the two words
    speech = np.median([rms(w.start, w.end) for w in words])
    assert rms(here.end + 0.02, then.start - 0.02) < 0.25 * speech


def test_speed_scales_the_timestamps(piper) -> None:  # type: ignore[no-untyped-def]
    text = "Speaking slowly takes longer than speaking fast."
    slow, fast = piper.synthesize_batch([SynthesisInput("a#0", text, speed=0.6, timestamps=True),
                                         SynthesisInput("b#0", text, speed=1.6, timestamps=True)])
    for r in (slow, fast):
        assert r.words is not None
        _check(r.words, text, len(r.audio) / piper.sample_rate)
    assert slow.words is not None and fast.words is not None
    assert slow.words[-1].end > 1.8 * fast.words[-1].end


def test_a_long_text_across_segments_keeps_its_offsets(piper) -> None:  # type: ignore[no-untyped-def]
    text = ("The storm came in from the west just after noon. Windows rattled in every house on the hill. "
            "By evening the power was out, and the village sat in the dark. Nobody minded much; they lit candles "
            "and told old stories until the wind died down.")
    request = SynthesisRequest(job_id="job_long", created_at=1, text=text, attributes={TIMESTAMPS_ATTRIBUTE: "word"})
    job = Job(request, split_text(text, 80))
    assert len(job.texts) >= 3
    segments = [Segment(job, i, t) for i, t in enumerate(job.texts)]
    for segment, result in zip(segments, piper.synthesize_batch([s.to_input() for s in segments]), strict=True):
        Synthesizer.record(segment, result)
    fields = job.word_timestamps("piper")
    words = captions.loads(fields["word_timestamps"])
    joined = join_audio([a for a in job.audio if a is not None], job.sample_rate)
    _check(words, text, len(joined) / job.sample_rate + 0.001)
    # Each segment's words lie inside that segment's own audio in the joined file, not before it.
    offsets = segment_offsets([len(a) for a in job.audio if a is not None], job.sample_rate)
    at = 0
    for i, segment_text in enumerate(job.texts):
        n = len(segment_text.split())
        start, end = offsets[i] / job.sample_rate, (offsets[i] + len(job.audio[i])) / job.sample_rate  # type: ignore[arg-type]
        assert all(start - 0.001 <= w.start and w.end <= end + 0.001 for w in words[at : at + n]), i
        at += n
    assert at == len(words)
    # Streamed, each segment carries its own words, already at their place in the whole audio.
    streamed = [w for i in range(len(job.texts)) for w in captions.loads(job.segment_record(i).word_timestamps or "[]")]
    assert streamed == words


def test_an_engine_without_timings_says_so() -> None:
    request = SynthesisRequest(job_id="job_s1", created_at=1, text="Hi there.", attributes={TIMESTAMPS_ATTRIBUTE: "word"})
    job = Job(request, ["Hi there."])
    job.audio, job.sample_rate = [np.zeros(100, dtype=np.float32)], RATE
    assert job.word_timestamps("s1mini") == {"timestamps_unavailable": "the s1mini engine does not give word timestamps"}
    plain = Job(SynthesisRequest(job_id="job_p", created_at=1, text="Hi."), ["Hi."])
    assert plain.word_timestamps("piper") == {}  # not asked for: nothing said either way


async def test_the_storage_step_stores_timestamps_beside_the_audio(tmp_path: Path) -> None:
    store = LocalAudioStore(tmp_path)
    storer = Storer(store, StorageSettings(local_dir=tmp_path))
    words = captions.dumps([WordTime("Hi", 0.05, 0.3), WordTime("there.", 0.35, 0.7)])
    completion = await storer.complete(SynthesisResult(
        job_id="job_ts1", status="succeeded", created_at=1, synthesized_at=2, format="wav",
        audio=to_wav(np.zeros(RATE, dtype=np.float32), RATE), word_timestamps=words, engine="piper"))
    assert completion.status == "succeeded" and completion.word_timestamps == words
    assert completion.timestamps_key is not None and completion.timestamps_key.endswith("job_ts1.timestamps.json")
    assert completion.audio_key is not None and completion.timestamps_key.rsplit("/", 1)[0] == completion.audio_key.rsplit("/", 1)[0]
    assert json.loads(await store.get(completion.timestamps_key)) == json.loads(words)
    projected = completion_fields(completion)
    assert "word_timestamps" not in projected and projected["timestamps_key"] == completion.timestamps_key
    plain = await storer.complete(SynthesisResult(job_id="job_ts2", status="succeeded", created_at=1, synthesized_at=2,
                                                  audio=to_wav(np.zeros(100, dtype=np.float32), RATE)))
    assert plain.timestamps_key is None and plain.word_timestamps is None


class _Records:
    def __init__(self, record: dict[str, str]) -> None:
        self.record = record

    async def owned(self, caller: object, job_id: str) -> dict[str, str]:
        return self.record


@pytest.mark.parametrize(("record", "status", "code"), [
    ({"status": "running"}, 409, "timestamps_not_ready"),
    ({"status": "failed"}, 409, "timestamps_unavailable"),
    ({"status": "succeeded", "timestamps_unavailable": "the s1mini engine does not give word timestamps"}, 409,
     "timestamps_unavailable"),
    ({"status": "succeeded"}, 409, "timestamps_not_requested"),
    ({"status": "succeeded", "timestamps_key": "audio/ts/job_gone.timestamps.json"}, 410, "timestamps_expired"),
])
async def test_the_api_says_why_a_job_has_no_timestamps(tmp_path: Path, record: dict[str, str], status: int, code: str) -> None:
    from producer_api.errors import ApiError
    from producer_api.services.audio import AudioAccess

    access = AudioAccess(queries=_Records(record), store=LocalAudioStore(tmp_path), models=None, presign_expiry=60)  # type: ignore[arg-type]
    with pytest.raises(ApiError) as raised:
        await access.timestamps(None, "job_x")  # type: ignore[arg-type]
    assert (raised.value.status, raised.value.code) == (status, code)
    if "timestamps_unavailable" in record:
        assert "s1mini engine does not give word timestamps" in raised.value.message


async def test_the_api_reads_stored_timestamps(tmp_path: Path) -> None:
    from producer_api.services.audio import AudioAccess

    store = LocalAudioStore(tmp_path)
    words = [WordTime("Hi", 0.05, 0.3)]
    stored = await store.put("audio/ok/job_ok.timestamps.json", captions.dumps(words).encode(), "application/json")
    access = AudioAccess(queries=_Records({"status": "succeeded", "timestamps_key": stored.key}), store=store,  # type: ignore[arg-type]
                         models=None, presign_expiry=60)  # type: ignore[arg-type]
    assert await access.timestamps(None, "job_ok") == words  # type: ignore[arg-type]


def test_the_flag_is_optional_and_batch_items_carry_it() -> None:
    from pydantic import ValidationError

    from producer_api.models import BatchItem, OpenAISpeechRequest

    assert OpenAISpeechRequest(input="Hi.").timestamps is None  # the OpenAI path is unchanged by default
    assert BatchItem(text="Hi.", timestamps="word").as_speech(None).timestamps == "word"
    with pytest.raises(ValidationError):
        OpenAISpeechRequest(input="Hi.", timestamps="phoneme")  # type: ignore[arg-type]
