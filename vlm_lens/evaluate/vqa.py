"""VQAv2 accuracy as the official evaluation (``vqaEval.py``) computes it.

The official rules (GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, the
current master), restated:

1. **Prediction.** Newlines and tabs become spaces, the ends are stripped, then
   `process_punctuation` and `process_digit_article` (below) are applied.
2. **Annotator answers.** Left as stored, unless the ten answers are not all equal; then
   `process_punctuation` (only that: no lower-casing, no number words, no articles) is applied
   to each. The official annotation files already store answers normalised (lower-case, digits),
   so this asymmetry only matters for references written by hand: write ``"2"``, not ``"two"``.
3. **Score.** For each of the ten annotators, leave that one out and count how many of the other
   nine gave exactly the (processed) prediction; the subset's score is ``min(count / 3, 1)``.
   The accuracy is the mean of the ten subset scores. (The official code leaves one answer out
   by comparing answer dicts, whose ``answer_id`` is unique, so this is leave-one-out by index.)

`process_punctuation`: for each of the 21 characters ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ?
!``: if the text has that character followed by a space, or preceded by one, or the text has a
comma between two digits anywhere, the character is deleted; otherwise it is replaced by a space.
Then periods not followed by a digit are deleted (at most 32 of them: the official call passes
``re.UNICODE``, whose value is 32, as the ``count`` argument of ``re.sub``).

`process_digit_article`: lower-case, split on whitespace, map the number words ``none, zero,
one, ..., ten`` to ``0, 0, 1, ..., 10``, drop the articles ``a, an, the``, expand the official
table of contractions written without apostrophes (``dont`` -> ``don't``), join with single
spaces.

Example:
    >>> vqa_accuracy("Two.", ["2"] * 10)
    1.0
    >>> round(vqa_accuracy("red", ["red", "red"] + ["blue"] * 8), 4)  # 2 of 10 said red
    0.6
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

from vlm_lens.errors import VLMInputError

__all__ = ["normalize_answer", "process_digit_article", "process_punctuation", "vqa_accuracy"]

_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')
# The official pattern is "(?!<=\d)(\.)(?!\d)": its first group is a negative *lookahead* for the
# text "<=digit" (a mistyped lookbehind), which never matches at a period, so in effect it deletes
# every period not followed by a digit.
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
_PERIOD_COUNT = int(re.UNICODE)  # 32: what the official code passes as re.sub's `count`
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4"}
_NUMBERS |= {"five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})

# The official contraction table as "written=expanded" pairs. It is reproduced entry for entry,
# including its oddities: keys with capitals ("Im", "Ive", ...) never match a lower-cased word,
# and "somebody'd" maps to "somebodyd".
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())
"""The official table: contraction written without its apostrophe(s) -> with them."""


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation`` (see the module docstring).

    Example:
        >>> process_punctuation("black-and-white"), process_punctuation("yes, it is")
        ('black and white', 'yes it is')
        >>> process_punctuation("1,000 dogs."), process_punctuation("3.5")
        ('1000 dogs', '3.5')
    """
    out = text
    comma_between_digits = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in _PUNCT:
        # The conditions look at the original text, not at `out`, as the official code does.
        if p + " " in text or " " + p in text or comma_between_digits:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out, count=_PERIOD_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle`` (see the module docstring).

    Example:
        >>> process_digit_article("The Two dogs"), process_digit_article("it isnt a  cat")
        ('2 dogs', "it isn't cat")
    """
    words = [_NUMBERS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(prediction: str) -> str:
    """A prediction as the official evaluation compares it (step 1 of the module docstring).

    Example:
        >>> normalize_answer("  A Dog!\\n")
        'dog'
    """
    text = prediction.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Official VQA accuracy of one prediction against the annotators' answers.

    Args:
        prediction: the model's answer, as generated (normalised here).
        answers: the annotators' answers as stored (ten in VQAv2; any number >= 2 works the
            same way, leave-one-out over however many there are; fewer than 4 warn, as a
            matching answer cannot reach 1).

    Returns:
        The mean over the leave-one-out subsets of ``min(#matches / 3, 1)``, in ``[0, 1]``.

    Raises:
        VLMInputError: if `answers` is empty, has one answer (every score would be 0) or is
            not a sequence of strings.

    Example:
        >>> vqa_accuracy("yes", ["yes"] * 10), vqa_accuracy("no", ["yes"] * 10)
        (1.0, 0.0)
        >>> round(vqa_accuracy("2", ["2"] * 3 + ["3"] * 7), 4)  # 3 agree: 7/10 * 1 + 3/10 * 2/3
        0.9
    """
    if isinstance(answers, str) or not all(isinstance(a, str) for a in answers):
        raise VLMInputError(
            "vqa_accuracy needs the annotators' answers as a list of strings (VQAv2 has ten per "
            f"question); got {answers!r}"
        )
    if len(answers) == 0:
        raise VLMInputError(
            "vqa_accuracy needs at least one annotator answer; this question has none (check the "
            "annotations file or the answers column)"
        )
    if len(answers) == 1:
        raise VLMInputError(
            "vqa_accuracy is undefined with one annotator answer: leaving it out leaves no one "
            "to agree with, so even a matching answer scores 0; give every question several "
            "answers (VQAv2 has ten), or score single-answer data by exact match"
        )
    if len(answers) < 4:
        warnings.warn(
            f"{len(answers)} annotator answers: even a matching answer scores at most "
            f"{(len(answers) - 1) / 3:.3f} (VQA accuracy needs 4 or more to reach 1; VQAv2 "
            "has ten)",
            stacklevel=2,
        )
    refs = list(answers)
    if len(set(refs)) > 1:
        refs = [process_punctuation(a) for a in refs]
    pred = normalize_answer(prediction)
    matches = [a == pred for a in refs]
    total = sum(matches)
    # Leaving annotator i out removes one match exactly when annotator i matched.
    return sum(min(1.0, (total - m) / 3) for m in matches) / len(refs)
