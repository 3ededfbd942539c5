"""The Table 1 metrics: official VQA accuracy on hand-derived cases, CIDEr-D equal to
pycocoevalcap's own Cider on the same inputs, χ_out equal to a brute-force count, and the
tasks' scoring."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate import TASKS, EvalItem, chi_out, cider, cider_per_item, vqa_accuracy
from vlm_lens.evaluate.vqa import normalize_answer, process_digit_article, process_punctuation

# --------------------------------------------------------------------------------------------
# VQA accuracy. The official rule (vqaEval.py): the prediction is normalised (punctuation, then
# number words -> digits, articles dropped, contractions); the annotators' answers are
# punctuation-processed only when they are not all equal. For each annotator i, count the other
# nine answers equal to the prediction: subset score min(count / 3, 1); accuracy = their mean.
# If m of the 10 annotators match, a subset leaving out a matching one has m - 1 matches and one
# leaving out another has m, so acc = (m * min((m-1)/3, 1) + (10 - m) * min(m/3, 1)) / 10.


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        (0, 0.0),  # nobody: 0
        (1, 0.3),  # 1 * 0 + 9 * 1/3 = 3, / 10
        (2, 0.6),  # 2 * 1/3 + 8 * 2/3 = 6, / 10
        (3, 0.9),  # 3 * 2/3 + 7 * 1 = 9, / 10
        (4, 1.0),  # 4 * 1 + 6 * 1 = 10, / 10
        (10, 1.0),  # every subset has 9 matches, capped at 1
    ],
)
def test_vqa_leave_one_out_counts(m: int, expected: float) -> None:
    answers = ["cat"] * m + ["dog"] * (10 - m)
    assert vqa_accuracy("cat", answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_fewer_annotators() -> None:
    # Three answers, two match: leaving out a "yes" leaves 1 match (1/3), twice; leaving out
    # the "no" leaves 2 (2/3), once: (1/3 + 1/3 + 2/3) / 3 = 4/9.
    with pytest.warns(UserWarning, match="at most 0.667"):  # (3 - 1) / 3 even if all agree
        assert vqa_accuracy("yes", ["yes", "yes", "no"]) == pytest.approx(4 / 9, abs=1e-12)
    # One answer: leaving it out leaves no one, so the official rule gives 0 even to a match.
    with pytest.raises(VLMInputError, match="undefined with one annotator answer"):
        vqa_accuracy("yes", ["yes"])


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # Number words become digits in the prediction: "Two" -> "two" -> "2".
        ("Two", ["2"] * 10, 1.0),
        # ...but the annotators' answers never get the number-word step, so when all ten say
        # "two" (all equal: no processing at all) the normalised prediction "2" matches none.
        ("two", ["two"] * 10, 0.0),
        # Articles are dropped from the prediction: "A dog" -> "dog".
        ("A dog", ["dog"] * 10, 1.0),
        # Contractions written without the apostrophe are expanded: "dont know" -> "don't know".
        ("dont know", ["don't know"] * 10, 1.0),
        # Trailing period removed (not followed by a digit); newline -> space, then stripped.
        ("yes.\n", ["yes"] * 10, 1.0),
        # A decimal point stays: "3.5" matches "3.5" and not "35".
        ("3.5", ["3.5"] * 10, 1.0),
        ("3.5", ["35"] * 10, 0.0),
        # A comma between digits anywhere in the text: every listed punctuation mark is deleted
        # (not spaced), so "1,000" -> "1000".
        ("1,000", ["1000"] * 10, 1.0),
        # "-" with no space beside it becomes a space in the prediction.
        ("black-and-white", ["black and white"] * 10, 1.0),
        # Annotators disagree (3 x "black-and-white", 7 x "white"): their answers are
        # punctuation-processed, "black-and-white" -> "black and white", which the normalised
        # prediction matches: m = 3 -> 0.9.
        ("black and white", ["black-and-white"] * 3 + ["white"] * 7, 0.9),
        # All ten agree on "black-and-white": not processed, and the prediction "black and
        # white" (or "black-and-white", normalised to it) matches none of them.
        ("black-and-white", ["black-and-white"] * 10, 0.0),
        # "/" next to a space ("left / right" has " /") is deleted: "left  right" -> one space
        # after the split/join of the digit-article step.
        ("left / right", ["left right"] * 10, 1.0),
        # Matching is exact after normalisation: case of the prediction is lowered.
        ("YES", ["yes"] * 10, 1.0),
        ("yes!", ["no"] * 10, 0.0),
    ],
)
def test_vqa_normalisation_rules(prediction: str, answers: list[str], expected: float) -> None:
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


def test_vqa_normalisation_steps() -> None:
    # processPunctuation: ", " in the text -> "," deleted; "?" without a space beside it and no
    # digit comma -> replaced by a space; periods not followed by a digit deleted.
    assert process_punctuation("yes, it is") == "yes it is"
    assert process_punctuation("what?why") == "what why"
    assert process_punctuation("dr. no 2.5") == "dr no 2.5"
    # At most 32 periods are removed (the official code passes re.UNICODE == 32 as re.sub's
    # count): 40 periods -> 8 left.
    assert process_punctuation("." * 40) == "." * 8
    # processDigitArticle: lower-case, none/zero -> 0, ten -> 10, "eleven" stays, articles out.
    assert process_digit_article("None of The ten an eleven") == "0 of 10 eleven"
    # Contraction keys with capitals never match a lower-cased word ("Im" stays "im").
    assert process_digit_article("Im") == "im"
    assert normalize_answer("\tThe Cat's toy!\n") == "cat's toy"


def test_vqa_bad_answers() -> None:
    with pytest.raises(VLMInputError, match="at least one annotator answer"):
        vqa_accuracy("yes", [])
    with pytest.raises(VLMInputError, match="list of strings"):
        vqa_accuracy("yes", "yes")


# --------------------------------------------------------------------------------------------
# CIDEr-D: equal to pycocoevalcap's own PTBTokenizer + Cider on the same inputs.


def _coco_reference(
    predictions: dict[str, str], references: dict[str, list[str]]
) -> tuple[float, list[float]]:
    """The COCO caption evaluation's own code path: tokenize both sides, then Cider."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": predictions[k]}] for k in references})
    score, scores = Cider().compute_score(gts, res)
    return float(score), [float(s) for s in scores]


@pytest.fixture(scope="module")
def caption_data() -> tuple[dict[str, str], dict[str, list[str]]]:
    references = {
        "1": ["A large red circle at the top left.", "a red circle in the top left", "A red ring."],
        "2": ["Two shapes: a small blue square and a green cross.", "a blue square, a cross"],
        "3": ["a yellow diamond at the bottom right.", "There is a yellow diamond."],
        "4": ["an orange triangle.", "A small orange triangle at the top right"],
    }
    predictions = {
        "1": "a red circle at the top left",
        "2": "A blue square and a green cross!",
        "3": "a purple ring",
        "4": "an orange triangle at the top right.",
    }
    return predictions, references


def test_cider_equals_pycocoevalcap(caption_data) -> None:
    predictions, references = caption_data
    score, scores = _coco_reference(predictions, references)
    assert cider(predictions, references) == score
    assert list(cider_per_item(predictions, references).values()) == scores
    assert score > 0  # the test is not vacuous: some n-grams match with non-zero weight
    assert scores[2] == 0.0  # "a purple ring" shares only "a" with its references...
    # ...and "a" is in every image's references, so its IDF weight log(4/4) is 0.


def test_cider_only_scores_predicted_ids(caption_data) -> None:
    predictions, references = caption_data
    subset = {k: predictions[k] for k in ("1", "2", "3")}
    expected, _ = _coco_reference(subset, {k: references[k] for k in subset})
    assert cider(subset, references) == expected  # "4"'s references do not enter the IDF


def test_cider_empty_prediction_scores_zero(caption_data) -> None:
    predictions, references = caption_data
    scores = cider_per_item({**predictions, "2": ""}, references)
    assert scores["2"] == 0.0  # no n-grams: a zero vector, similarity 0
    expected, per_item = _coco_reference({**predictions, "2": ""}, references)
    assert list(scores.values()) == per_item


def test_cider_bad_input(caption_data, monkeypatch) -> None:
    predictions, references = caption_data
    with pytest.raises(VLMInputError, match="no references"):
        cider({"9": "a cat"}, references)
    with pytest.raises(VLMInputError, match="at least one reference"):
        cider({"1": "a cat"}, {"1": []})
    with pytest.raises(VLMInputError, match="at least one prediction"):
        cider({}, references)
    # one image: pycocoevalcap gives 0 whatever the caption (every IDF is log(1/1)), so we refuse
    from pycocoevalcap.cider.cider import Cider

    one = {"1": references["1"]}
    exact = {"1": [str(references["1"][0])]}
    assert Cider().compute_score(one, exact)[0] == 0.0  # even the reference itself scores 0
    with pytest.raises(VLMInputError, match="undefined on one image"):
        cider({"1": str(references["1"][0])}, references)
    monkeypatch.setattr("vlm_lens.evaluate.cider_score.shutil.which", lambda _: None)
    with pytest.raises(VLMInputError, match="apt-get install default-jre-headless"):
        cider(predictions, references)


# --------------------------------------------------------------------------------------------
# χ_out: a brute-force count of same-label neighbours.


def _brute_force_counts(x: np.ndarray, labels: list[str], k: int) -> np.ndarray:
    n = len(labels)
    counts = np.zeros(n)
    for i in range(n):
        dist = [(float(((x[i] - x[j]) ** 2).sum()), j) for j in range(n) if j != i]
        neighbours = [j for _, j in sorted(dist)[:k]]  # ties by index: the lower wins
        counts[i] = sum(labels[j] == labels[i] for j in neighbours)
    return counts


@pytest.mark.filterwarnings("ignore:class .* images, so its")  # small classes on purpose
def test_chi_out_brute_force() -> None:
    rng = np.random.default_rng(3)
    labels = ["a"] * 7 + ["b"] * 5 + ["c"] * 4  # unbalanced, so the two averages differ
    x = rng.normal(size=(16, 3)) + np.repeat(np.eye(3)[[0, 1, 2]], [7, 5, 4], axis=0) * 1.5
    counts = _brute_force_counts(x, labels, k=4)
    per_sample = counts / 4
    t = torch.tensor(x, dtype=torch.float64)
    assert chi_out(t, labels, k=4, average="sample") == pytest.approx(per_sample.mean(), abs=1e-12)
    by_class = [per_sample[np.array(labels) == c].mean() for c in ("a", "b", "c")]
    assert chi_out(t, labels, k=4, average="class") == pytest.approx(np.mean(by_class), abs=1e-12)
    # the default is the paper's code (dadapy's class-weighted overlap)
    assert chi_out(t, labels, k=4) == chi_out(t, labels, k=4, average="class")
    assert np.mean(by_class) != pytest.approx(per_sample.mean(), abs=1e-6)
    assert 0 < per_sample.mean() < 1  # neither trivial extreme


@pytest.mark.filterwarnings("ignore:class .* images, so its")  # small classes on purpose
def test_chi_out_default_k_is_the_papers() -> None:
    x = torch.randn(31, 2, generator=torch.Generator().manual_seed(0))
    labels = ["a", "b"] * 15 + ["a"]
    counts = _brute_force_counts(x.numpy().astype(np.float64), labels, k=30)
    # k = 30 of 30 other samples: every other sample is a neighbour, whatever the distances.
    assert chi_out(x, labels, average="sample") == pytest.approx(counts.sum() / (31 * 30), abs=1e-6)
    with pytest.raises(VLMInputError, match="more than 30 images"):
        chi_out(x[:30], labels[:30])


def test_chi_out_undefined() -> None:
    x = torch.randn(6, 2)
    with pytest.raises(VLMInputError, match="at least two classes"):
        chi_out(x, ["a"] * 6, k=2)
    with pytest.raises(VLMInputError, match="more than 6 images"):
        chi_out(x, ["a", "b"] * 3, k=6)
    with pytest.raises(VLMInputError, match="one label per row"):
        chi_out(x, ["a", "b"], k=2)


# --------------------------------------------------------------------------------------------
# Tasks


def test_task_table() -> None:
    assert {name: (t.metric, t.max_new_tokens) for name, t in TASKS.items()} == {
        "vqav2": ("vqa_accuracy", 20),
        "coco-captions": ("cider", 60),
        "flickr30k": ("cider", 60),
        "imagenet-chi": ("chi_out", 0),
    }
    item = EvalItem("1", "x.jpg", question="what colour is the shape?")
    assert TASKS["vqav2"].prompt_text(item) == (
        "what colour is the shape?\nAnswer the question using a single word or phrase."
    )
    assert TASKS["flickr30k"].prompt_text(item) == (
        "Provide a one-sentence caption for the provided image."
    )
    assert TASKS["imagenet-chi"].prompt is None
    assert (TASKS["vqav2"].random_draws, TASKS["coco-captions"].random_draws) == (5, 3)


def test_task_scores() -> None:
    items = [
        EvalItem("1", "x.jpg", "q", ("red",) * 2 + ("blue",) * 8),
        EvalItem("2", "x.jpg", "q", ("2",) * 10),
    ]
    # item 1: m = 2 -> 0.6 (see above); item 2: "two" -> "2", m = 10 -> 1.0; mean 0.8
    assert TASKS["vqav2"].score({"1": "red", "2": "two"}, items) == pytest.approx(0.8)
    with pytest.raises(VLMInputError, match="1 of 2 items have no prediction"):
        TASKS["vqav2"].score({"1": "red"}, items)
    with pytest.raises(VLMInputError, match="score_representations"):
        TASKS["imagenet-chi"].score({}, items)
    labelled = [EvalItem(str(i), "x.jpg", label="ab"[i % 2]) for i in range(8)]
    x = torch.tensor([[float(i % 2) * 10 + i * 0.01] for i in range(8)])
    assert TASKS["imagenet-chi"].score_representations(x, labelled, k=3) == 1.0
    with pytest.raises(VLMInputError, match="has no label"):
        TASKS["imagenet-chi"].score_representations(x, items, k=1)


def test_task_caption_score_is_cider(caption_data) -> None:
    predictions, references = caption_data
    items = [EvalItem(k, "x.jpg", references=tuple(v)) for k, v in references.items()]
    expected, _ = _coco_reference(predictions, references)
    assert TASKS["coco-captions"].score(predictions, items) == expected


def test_leave_one_out_formula_matches_direct_enumeration() -> None:
    # The closed form used in the comments above against a direct enumeration of the ten
    # subsets (itertools.combinations of 9 of 10 annotators), for every m.
    for m in range(11):
        answers = ["x"] * m + ["y"] * (10 - m)
        subsets = itertools.combinations(range(10), 9)
        direct = np.mean([min(sum(answers[j] == "x" for j in s) / 3, 1) for s in subsets])
        assert vqa_accuracy("x", answers) == pytest.approx(direct, abs=1e-12)


def test_the_java_tokenizer_progress_line_stays_off_stderr(capfd: pytest.CaptureFixture) -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from vlm_lens.evaluate.cider_score import ptb_tokenize

    PTBTokenizer().tokenize({"a": [{"caption": "A dog."}]})  # pycocoevalcap alone prints it
    assert "PTBTokenizer" in capfd.readouterr().err
    assert ptb_tokenize({"a": ["A dog."]}) == {"a": ["a dog"]}
    assert "PTBTokenizer" not in capfd.readouterr().err


def test_chi_out_warns_when_a_class_cannot_reach_one() -> None:
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    labels = ["a"] * 35 + ["b"] * 5
    with pytest.warns(UserWarning, match=r"class 'b' has 5 images, so its χ is at most 4/30"):
        chi_out(x, labels)
    # every class above k: no warning
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chi_out(x, ["a"] * 32 + ["b"] * 32)
