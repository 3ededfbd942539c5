"""Table 1 data: the readers round-trip the world fixtures written in each real format (VQAv2
JSON + COCO images, Karpathy splits, class folders, Hugging Face datasets), sample as the paper
does, and turn bad data into one clear VLMInputError."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_lens.errors import VLMInputError
from vlm_lens.evaluate import (
    TASKS,
    EvalItem,
    load_item_image,
    read_class_folders,
    read_hf_dataset,
    read_karpathy,
    read_karpathy_folder,
    read_vqav2,
    read_vqav2_folder,
)
from vlm_lens.evaluate.fixtures import (
    to_hf_dataset,
    vqa_answer,
    write_class_folders,
    write_karpathy,
    write_vqav2,
)
from vlm_lens.world import ANSWERS, COLOURS, world_split

N_IMAGES = 6  # five questions each


@pytest.fixture(scope="module")
def vqa_dir(tmp_path_factory) -> Path:
    return write_vqav2(tmp_path_factory.mktemp("vqa"), n_images=N_IMAGES, seed=1)


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory) -> Path:
    return write_karpathy(tmp_path_factory.mktemp("coco"), "coco", n_test=5, n_train=3, n_val=2)


@pytest.fixture(scope="module")
def flickr_dir(tmp_path_factory) -> Path:
    return write_karpathy(tmp_path_factory.mktemp("flickr"), "flickr30k", n_test=4, n_train=2)


@pytest.fixture(scope="module")
def class_dir(tmp_path_factory) -> Path:
    return write_class_folders(tmp_path_factory.mktemp("classes"), n_per_class=3)


def _pixels(image) -> np.ndarray:
    return np.asarray(load_item_image(EvalItem("x", image)), dtype=np.int16)


# --------------------------------------------------------------------------------------------
# VQAv2


def test_vqav2_round_trip(vqa_dir) -> None:
    items = read_vqav2_folder(vqa_dir, limit=None)
    scenes = world_split("val", N_IMAGES, seed=1)
    expected = [(str((s.index + 1) * 1000 + k), qa) for s in scenes for k, qa in enumerate(s.qa)]
    assert [item.id for item in items] == [qid for qid, _ in expected]
    agreeing = 0
    for item, (_, qa), scene in zip(
        items, expected, [s for s in scenes for _ in s.qa], strict=True
    ):
        assert item.question == qa.question
        assert len(item.references) == 10
        # The true answer (digits for counts) is given by at least 6 of the 10; dissenters
        # give other answers of the same kind.
        top, count = Counter(item.references).most_common(1)[0]
        assert top == vqa_answer(qa.answer) and count >= 6
        assert set(item.references) <= {vqa_answer(a) for a in ANSWERS[qa.kind]}
        agreeing += len(set(item.references)) == 1
        # JPEG (quality 100, no chroma subsampling) keeps the world's pixels close.
        assert Path(item.image).name == f"COCO_val2014_{scene.index + 1:012d}.jpg"
        diff = np.abs(_pixels(item.image) - np.asarray(scene.image, dtype=np.int16))
        assert diff.mean() < 2.0
    # "Sometimes disagree": both kinds of question are present.
    assert 0 < agreeing < len(items)


def test_vqav2_paper_sampling(vqa_dir) -> None:
    everything = read_vqav2_folder(vqa_dir, limit=None)
    assert TASKS["vqav2"].default_limit == 2000
    assert TASKS["vqav2"].read(vqa_dir) == everything  # 30 < 2,000: all, in file order
    drawn = read_vqav2_folder(vqa_dir, limit=7, seed=42)
    picked = sorted(random.Random(42).sample(range(len(everything)), 7))
    assert drawn == [everything[i] for i in picked]
    other = TASKS["vqav2"].read(vqa_dir, limit=7, seed=5)
    assert other == [everything[i] for i in sorted(random.Random(5).sample(range(30), 7))]
    assert other != drawn


def test_vqav2_plain_names_and_png(tmp_path) -> None:
    folder = write_vqav2(tmp_path, n_images=2, plain_names=True, image_format="png")
    items = read_vqav2_folder(folder)
    assert Path(items[0].image).name == "000000000001.png"
    # PNG is lossless: the world's pixels exactly.
    assert np.array_equal(_pixels(items[0].image), np.asarray(world_split("val", 1)[0].image))


def test_vqav2_explicit_paths(vqa_dir) -> None:
    items = read_vqav2(
        vqa_dir / "v2_OpenEnded_mscoco_val2014_questions.json",
        vqa_dir / "v2_mscoco_val2014_annotations.json",
        vqa_dir / "val2014",
        limit=None,
    )
    assert items == read_vqav2_folder(vqa_dir, limit=None)


def _copy_vqa(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (
        "v2_OpenEnded_mscoco_val2014_questions.json",
        "v2_mscoco_val2014_annotations.json",
    ):
        (dst / name).write_bytes((src / name).read_bytes())
    (dst / "val2014").mkdir()
    for image in (src / "val2014").iterdir():
        (dst / "val2014" / image.name).write_bytes(image.read_bytes())
    return dst


QUESTIONS = "v2_OpenEnded_mscoco_val2014_questions.json"
ANNOTATIONS = "v2_mscoco_val2014_annotations.json"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / QUESTIONS).unlink(), r"exactly one VQA questions file"),
        (lambda d: (d / ANNOTATIONS).write_text("{not json"), r"is not valid JSON"),
        (lambda d: (d / QUESTIONS).write_text("[]"), r"holds a JSON list, not an object"),
        (lambda d: (d / QUESTIONS).write_text('{"qs": []}'), r"has no 'questions' list"),
        (
            lambda d: (d / QUESTIONS).write_text('{"questions": [{"question": "q"}]}'),
            r"question 0 has no 'image_id', 'question_id'",
        ),
        (
            lambda d: (d / ANNOTATIONS).write_text(
                '{"annotations": [{"question_id": 1000, "answers": ["yes"]}]}'
            ),
            r"'answers' that are not a list of \{'answer'",
        ),
        (
            lambda d: (d / ANNOTATIONS).write_text('{"annotations": []}'),
            r"question 1000 .* has no annotation",
        ),
        (
            lambda d: (d / "val2014" / "COCO_val2014_000000000001.jpg").unlink(),
            r"image_id 1\) is not in .*COCO_val2014_000000000001.jpg or 000000000001.jpg",
        ),
        (
            lambda d: (d / "val2014" / "COCO_val2014_000000000002.jpg").write_bytes(b"junk"),
            r"COCO_val2014_000000000002.jpg of question 2000 cannot be opened",
        ),
        (lambda d: [p.unlink() for p in (d / "val2014").iterdir()], r"has no COCO images"),
    ],
)
def test_vqav2_bad_data(vqa_dir, tmp_path, damage, message) -> None:
    folder = _copy_vqa(vqa_dir, tmp_path / "copy")
    damage(folder)
    with pytest.raises(VLMInputError, match=message):
        TASKS["vqav2"].read(folder, limit=None)


def test_missing_folders(tmp_path) -> None:
    for name in TASKS:
        with pytest.raises(VLMInputError, match="does not exist"):
            TASKS[name].read(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------
# Karpathy-split captions


def test_karpathy_coco_round_trip(coco_dir) -> None:
    data = json.loads((coco_dir / "dataset_coco.json").read_text())
    assert {r["split"] for r in data["images"]} == {"train", "val", "test"}
    test_records = [r for r in data["images"] if r["split"] == "test"]
    items = TASKS["coco-captions"].read(coco_dir)
    assert [item.id for item in items] == [str(r["cocoid"]) for r in test_records]
    scenes = world_split("test", 5)
    for item, record, scene in zip(items, test_records, scenes, strict=True):
        assert item.references == tuple(s["raw"] for s in record["sentences"])
        assert len(item.references) == 5 == len(set(item.references))
        assert item.references[0] == scene.caption
        assert Path(item.image) == coco_dir / "val2014" / record["filename"]
        assert np.abs(_pixels(item.image) - np.asarray(scene.image, dtype=np.int16)).mean() < 2
    # The paper's sample: the first N test images, in file order.
    assert TASKS["coco-captions"].read(coco_dir, limit=2) == items[:2]
    assert TASKS["coco-captions"].default_limit == 2000
    # The JSON's own path works too; so does another split.
    assert TASKS["coco-captions"].read(coco_dir / "dataset_coco.json") == items
    train = read_karpathy_folder(coco_dir, split="train")
    assert [Path(i.image).parent.name for i in train] == ["train2014"] * 3


def test_karpathy_flickr_round_trip(flickr_dir) -> None:
    items = TASKS["flickr30k"].read(flickr_dir)
    scenes = world_split("test", 4)
    assert [item.references[0] for item in items] == [s.caption for s in scenes]
    assert [item.id for item in items] == [f"{300000 + s.index}.jpg" for s in scenes]
    assert all(Path(item.image).parent.name == "flickr30k-images" for item in items)


def test_karpathy_bad_data(coco_dir, tmp_path) -> None:
    path = coco_dir / "dataset_coco.json"
    data = json.loads(path.read_text())
    bad = tmp_path / "dataset_coco.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(VLMInputError, match="has no 'images' list"):
        read_karpathy(bad, coco_dir)
    bad.write_text(json.dumps({"images": [{"filename": "x.jpg", "split": "test"}]}))
    with pytest.raises(VLMInputError, match="image 0 has no 'sentences'"):
        read_karpathy(bad, coco_dir)
    with pytest.raises(VLMInputError, match=r"no images in split 'testing' .*\['test', 'train'"):
        read_karpathy(path, coco_dir, split="testing")
    record = {**data["images"][1], "sentences": ["a caption"]}
    bad.write_text(json.dumps({"images": [record]}))
    with pytest.raises(VLMInputError, match="not a non-empty list of"):
        read_karpathy(bad, coco_dir)
    record = {**data["images"][1], "filename": "COCO_val2014_000000999999.jpg"}
    bad.write_text(json.dumps({"images": [record]}))
    with pytest.raises(VLMInputError, match="COCO_val2014_000000999999.jpg' of .* is not in"):
        read_karpathy(bad, coco_dir)
    with pytest.raises(VLMInputError, match="should hold the Karpathy-split file"):
        TASKS["flickr30k"].read(tmp_path / "..")


# --------------------------------------------------------------------------------------------
# Class folders


def test_class_folders_round_trip(class_dir) -> None:
    items = TASKS["imagenet-chi"].read(class_dir)
    assert [item.label for item in items] == [
        c for c in ("blue_square", "green_triangle", "red_circle", "yellow_cross") for _ in range(3)
    ]
    assert items[0].id == "blue_square/000000.png"
    for item in items:
        colour, shape = item.label.split("_")
        pixels = _pixels(item.image)
        # The only chromatic pixels of a world image are its object's palette colour.
        chromatic = pixels[(pixels.max(axis=2) - pixels.min(axis=2)) > 0]
        assert (chromatic == np.array(COLOURS[colour])).all() and len(chromatic) > 0
    drawn = read_class_folders(class_dir, limit=5, seed=1)
    assert drawn == [items[i] for i in sorted(random.Random(1).sample(range(12), 5))]


def test_class_folders_bad_data(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VLMInputError, match="has no class folders with images"):
        read_class_folders(tmp_path / "empty")
    (tmp_path / "c" / "cat").mkdir(parents=True)
    (tmp_path / "c" / "cat" / "1.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(VLMInputError, match=r"1.jpg of class 'cat' cannot be opened"):
        read_class_folders(tmp_path / "c")


# --------------------------------------------------------------------------------------------
# Hugging Face datasets


@pytest.mark.parametrize(
    ("task", "fixture", "kind"),
    [
        ("vqav2", "vqa_dir", "vqa"),
        ("flickr30k", "flickr_dir", "captions"),
        ("imagenet-chi", "class_dir", "classes"),
    ],
)
def test_hf_dataset_round_trip(task, fixture, kind, request, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    items = TASKS[task].read(request.getfixturevalue(fixture), limit=8, seed=0)
    ds = to_hf_dataset(items, kind)
    for source in (
        ds,
        _saved(ds, tmp_path / "ds"),
        _saved(datasets.DatasetDict({_split(kind): ds}), tmp_path / "dd"),
    ):
        back = TASKS[task].read(source, limit=None)
        assert [(b.id, b.question, b.references) for b in back] == [
            (i.id, i.question, i.references) for i in items
        ]
        if kind == "classes":
            assert [b.label for b in back] == [i.label for i in items]
        for b, i in zip(back, items, strict=True):
            assert np.array_equal(_pixels(b.image), _pixels(i.image))
    # The task's sampling applies to rows as to files.
    assert [b.id for b in TASKS[task].read(ds, limit=3, seed=0)] == [
        i.id
        for i in (
            items[:3]
            if kind == "captions"
            else [items[j] for j in sorted(random.Random(0).sample(range(8), 3))]
        )
    ]


def _saved(ds, path: Path) -> Path:
    ds.save_to_disk(str(path))
    return path


def _split(kind: str) -> str:
    return {"vqa": "validation", "captions": "test", "classes": "validation"}[kind]


def test_hf_dataset_columns_and_errors(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    ds = datasets.Dataset.from_dict(
        {
            "picture": [image, image],
            "sentences": [[{"raw": "a"}, {"raw": "b"}], [{"raw": "c"}]],
            "cocoid": [5, 6],
        }
    )
    items = read_hf_dataset(ds, "captions")
    assert [(i.id, i.references) for i in items] == [("5", ("a", "b")), ("6", ("c",))]
    # A Sequence of structs comes back as a dict of lists.
    answers = datasets.Sequence(
        {"answer": datasets.Value("string"), "answer_id": datasets.Value("int32")}
    )
    vqa = datasets.Dataset.from_dict(
        {
            "image": [image],
            "question": ["q"],
            "answers": [{"answer": ["x", "y"], "answer_id": [1, 2]}],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "question": datasets.Value("string"), "answers": answers}
        ),
    )
    assert read_hf_dataset(vqa, "vqa")[0].references == ("x", "y")
    # yerevann/coco-karpathy: no image column, filepath + filename under an image root.
    (tmp_path / "val2014").mkdir()
    image.save(tmp_path / "val2014" / "COCO_val2014_000000000007.jpg")
    karpathy = datasets.Dataset.from_dict(
        {
            "filepath": ["val2014"],
            "filename": ["COCO_val2014_000000000007.jpg"],
            "sentences": [["a", "b"]],
            "cocoid": [7],
        }
    )
    (item,) = read_hf_dataset(karpathy, "captions", image_root=tmp_path)
    assert (item.id, item.image, item.references) == (
        "7",
        str(tmp_path / "val2014" / "COCO_val2014_000000000007.jpg"),
        ("a", "b"),
    )
    with pytest.raises(VLMInputError, match="no answers column"):
        read_hf_dataset(ds, "vqa")
    with pytest.raises(VLMInputError, match="no column 'img'"):
        read_hf_dataset(ds, "captions", image_column="img")
    broken = datasets.Dataset.from_dict(
        {"image": [{"bytes": b"junk", "path": None}], "label": ["cat"]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
    )
    with pytest.raises(VLMInputError, match="row 0 .* cannot be opened"):
        read_hf_dataset(broken, "classes")
    paths = datasets.Dataset.from_dict({"image": ["a.png"], "label": ["cat"]})
    image.save(tmp_path / "a.png")
    assert read_hf_dataset(paths, "classes", image_root=tmp_path)[0].image == str(
        tmp_path / "a.png"
    )
    with pytest.raises(VLMInputError, match="a.png of row 0 .* does not exist"):
        read_hf_dataset(paths, "classes")
    with pytest.raises(VLMInputError, match="splits \\['train'\\], not 'nope'"):
        from vlm_lens.evaluate.readers import load_hf_dataset

        load_hf_dataset(
            _saved(datasets.DatasetDict({"train": paths}), tmp_path / "dd"), "classes", "nope"
        )


def test_load_item_image_errors(tmp_path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"junk")
    with pytest.raises(VLMInputError, match="bad.jpg of item 'x' cannot be opened"):
        load_item_image(EvalItem("x", str(tmp_path / "bad.jpg")))
    grey = Image.new("L", (3, 2))
    assert load_item_image(EvalItem("x", grey)).mode == "RGB"
