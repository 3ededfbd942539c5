"""CIDEr-D of generated captions, computed by pycocoevalcap (the COCO caption evaluation code).

pycocoevalcap's ``Cider`` class is **CIDEr-D** (Vedantam et al. 2015, section 4.2): TF-IDF
n-gram vectors (n = 1..4) whose document frequencies come from the references of the scored
corpus, candidate counts clipped by the reference counts, a Gaussian length penalty
(sigma = 6), the mean over n-gram orders and references, times 10. The COCO leaderboard's
"CIDEr" is this number; the paper reports it on that scale (0.35 means "CIDEr 35" in papers
that multiply by 100).

Before scoring, every caption is tokenized by pycocoevalcap's ``PTBTokenizer`` (Stanford
CoreNLP 3.4.1's PTB tokenizer, lower-cased, punctuation tokens removed), as the COCO evaluation
does. It runs Java: install a JRE (Debian: ``apt-get install default-jre-headless``).

Example:
    >>> refs = {"1": ["a red circle.", "a red ring"], "2": ["a blue square.", "two shapes"]}
    >>> cider({"1": "A red circle", "2": "a blue square"}, refs) > cider({"1": "x", "2": "y"}, refs)
    True
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from vlm_lens.errors import VLMInputError

__all__ = ["cider", "cider_per_item", "ptb_tokenize"]

JAVA_HINT = (
    "the PTB tokenizer of pycocoevalcap runs Java, and no `java` is on PATH; install a JRE "
    "(Debian/Ubuntu: `apt-get install default-jre-headless`)"
)


def ptb_tokenize(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Tokenize captions with pycocoevalcap's ``PTBTokenizer`` (one Java call for all).

    Args:
        captions: id -> captions.

    Returns:
        id -> the tokenized captions (lower-case, tokens joined by single spaces, punctuation
        removed), in the same order.

    Raises:
        VLMInputError: if Java is missing or the tokenizer gives back the wrong number of lines.

    Example:
        >>> ptb_tokenize({"a": ["A dog, running.", "Dogs' toys"]})
        {'a': ['a dog running', 'dogs toys']}
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if shutil.which("java") is None:
        raise VLMInputError(JAVA_HINT)
    ids = [key for key, values in captions.items() for _ in values]
    # One caption per line of the tokenizer's input; an empty caption is sent as ".", which
    # tokenizes to nothing (punctuation is removed), so that no input line is blank.
    texts = [
        str(text).replace("\n", " ").strip() or "."
        for values in captions.values()
        for text in values
    ]
    if not texts:
        return {}
    with _java_stderr_captured():
        tokenized = PTBTokenizer().tokenize(
            {str(i): [{"caption": text}] for i, text in enumerate(texts)}
        )
    if len(tokenized) != len(texts):
        raise VLMInputError(
            f"the PTB tokenizer returned {len(tokenized)} lines for {len(texts)} captions; check "
            "that `java -version` works"
        )
    out: dict[str, list[str]] = {key: [] for key in captions}
    for i, key in enumerate(ids):
        out[key].append(tokenized[str(i)][0])
    return out


@contextmanager
def _java_stderr_captured() -> Iterator[None]:
    """Keep the Java tokenizer's progress line ("PTBTokenizer tokenized ... tokens") off the
    terminal: it writes to the process's stderr, so file descriptor 2 goes to a temporary file
    for the call, whose text is shown only if the call fails."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _check(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    missing = [key for key in predictions if key not in references]
    if missing:
        raise VLMInputError(
            f"{len(missing)} predictions have no references (first: {missing[0]!r}); give "
            "references for every predicted id"
        )
    empty = [key for key in predictions if isinstance(references[key], str) or not references[key]]
    if empty:
        raise VLMInputError(
            f"the references of {empty[0]!r} are not a non-empty list of captions; CIDEr needs "
            "at least one reference caption per image"
        )
    if not predictions:
        raise VLMInputError("cider needs at least one prediction; got none")
    if len(predictions) < 2:
        raise VLMInputError(
            "CIDEr is undefined on one image: its document frequencies come from the scored "
            "images' references, so every n-gram's IDF is log(1/1) = 0 and the score is 0 "
            "whatever the caption; score two or more images"
        )


def cider_per_item(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Per-image CIDEr-D (the corpus score is their mean); document frequencies from the
    references of the predicted ids. See `cider`.

    Example:
        >>> refs = {"1": ["a red circle"], "2": ["a blue square"]}
        >>> scores = cider_per_item({"1": "a red circle", "2": "a green ring"}, refs)
        >>> scores["1"] > scores["2"] == 0.0
        True
    """
    from pycocoevalcap.cider.cider import Cider

    _check(predictions, references)
    keys = list(predictions)
    res = ptb_tokenize({key: [predictions[key]] for key in keys})
    gts = ptb_tokenize({key: list(references[key]) for key in keys})
    _, scores = Cider().compute_score(gts, res)
    return {key: float(score) for key, score in zip(keys, scores, strict=True)}


def cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> float:
    """Corpus CIDEr-D of `predictions` against `references`, by pycocoevalcap.

    Only the ids in `predictions` are scored, and the document frequencies come from their
    references (the COCO evaluation's behaviour), so the score of an image depends on which
    other images are scored with it.

    Args:
        predictions: id -> generated caption (may be empty).
        references: id -> reference captions (at least one each; extra ids are ignored).

    Returns:
        The mean CIDEr-D over the predicted images (pycocoevalcap's scale: 0 to about 10,
        typically 0 to 1.5).

    Raises:
        VLMInputError: if a predicted id has no references, there are fewer than two
            predictions (CIDEr's IDF is then 0 for every n-gram: undefined), or Java is
            missing (the message says how to install it).

    Example:
        >>> refs = {"1": ["a red circle"], "2": ["a blue square"]}
        >>> cider({"1": "a blue square", "2": "a red circle"}, refs)
        0.0
    """
    scores = cider_per_item(predictions, references)
    return float(sum(scores.values()) / len(scores))
