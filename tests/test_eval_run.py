"""Running Table 1: conditions, prefix-reused generation, the resumable runner, the CLI.

The models are the shipped organisms; the data are helper fixtures in the real formats
(`vlm_lens.evaluate.fixtures`). Expected values come from independent computations: plain
`HookedVLM.generate` for the shared-prefix generation, a full `run_with_cache` for the χ
representations, an uninterrupted run for the resumed one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlm_lens import HookedVLM, hooks
from vlm_lens.cli import main
from vlm_lens.errors import StoreConfigError, VLMInputError
from vlm_lens.evaluate import (
    TASKS,
    EvalItem,
    evaluate,
    load_tables,
    parse_conditions,
    progressive_conditions,
)
from vlm_lens.evaluate.conditions import ConditionContext, item_seed
from vlm_lens.evaluate.generation import generate_runs, shared_prefix_end
from vlm_lens.evaluate.predictions import PredictionLog
from vlm_lens.interventions import gate_knockout, image_to_text_knockout, steer
from vlm_lens.positions import random_image_tokens, select
from vlm_lens.report import html as report_html
from vlm_lens.world import world_split
from vlm_lens.zoo.tasks import question_prompt


@pytest.fixture(scope="module")
def native() -> HookedVLM:
    torch.set_num_threads(1)
    return HookedVLM.from_pretrained("organism:native")


@pytest.fixture(scope="module")
def nonnative() -> HookedVLM:
    return HookedVLM.from_pretrained("organism:nonnative")


@pytest.fixture(scope="module")
def vqa_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vlm_lens.evaluate.fixtures import write_vqav2

    return write_vqav2(tmp_path_factory.mktemp("vqa"), n_images=8, max_objects=1)


def _batch(model: HookedVLM, n: int, kind: str = "colour"):
    scenes = world_split("test", n, seed=1, max_objects=1)
    prompts = [
        question_prompt(next(q for q in s.qa if q.kind == kind).question, model.image_placeholder)
        for s in scenes
    ]
    return model.prepare(images=[s.image for s in scenes], text=prompts, padding_side="left")


# ---------------------------------------------------------------------- the claim
def test_image_to_text_knockout_lowers_vqa_accuracy_on_native(native, vqa_folder):
    items = TASKS["vqav2"].read(vqa_folder)
    result = evaluate(native, "vqav2", items, "baseline,image->text", progress=False)
    scores = result.scores
    assert result.model == "organism:native" and result.n == len(items) == 40
    assert scores["image->text"] < scores["baseline"] - 0.2, scores


# ---------------------------------------------------------------------- prefix reuse
@pytest.mark.parametrize("which", ["native", "nonnative"])
def test_generation_from_a_shared_prefix_equals_plain_generation(which, request):
    model = request.getfixturevalue(which)
    batch = _batch(model, 6)
    assert model.can_generate_from_prefix(batch)  # one question kind: no padding
    runs = {
        "baseline": parse_conditions("baseline")[0].build(batch, ConditionContext(2)),
        "gate": gate_knockout(batch),
        "image->text": image_to_text_knockout(batch),
    }
    upto, sharing = shared_prefix_end(batch, runs)
    assert upto == int(batch.layout.positions("gate")[0]) and sorted(sharing) == sorted(runs)
    prefix = model.prefix_cache(batch, upto=upto)
    for hooks_ in runs.values():
        plain = model.generate(batch, max_new_tokens=8, fwd_hooks=hooks_)
        shared = model.generate(batch, max_new_tokens=8, fwd_hooks=hooks_, prefix=prefix)
        assert torch.equal(plain, shared)
    assert prefix.past_key_values.get_seq_length() == upto  # the prefix is never written
    reused = generate_runs(model, batch, runs, max_new_tokens=8)
    full = generate_runs(model, batch, runs, max_new_tokens=8, reuse_prefix=False)
    assert all(torch.equal(reused[r], full[r]) for r in runs)
    # image->text changes the answers, so the comparison above can fail
    assert not torch.equal(full["baseline"], full["image->text"])
    # a hook that writes at a prompt position finds it in the shared-prefix pass too
    vector = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 100
    steered = {"gate": runs["gate"], "steer": steer(batch, vector, positions="last", layers=1)}
    assert steered["steer"].earliest > upto
    reused = generate_runs(model, batch, steered, max_new_tokens=8)
    full = generate_runs(model, batch, steered, max_new_tokens=8, reuse_prefix=False)
    assert torch.equal(reused["steer"], full["steer"])
    assert not torch.equal(
        full["steer"], generate_runs(model, batch, runs, max_new_tokens=8)["baseline"]
    )


def test_padded_batches_do_not_generate_from_a_prefix(native):
    scenes = world_split("test", 2, seed=1, max_objects=1)
    questions = [scenes[0].qa[0].question, scenes[1].qa[2].question]  # colour, position
    prompts = [question_prompt(q, native.image_placeholder) for q in questions]
    batch = native.prepare(images=[s.image for s in scenes], text=prompts, padding_side="left")
    assert len(set(batch.attention_mask.sum(1).tolist())) == 2  # padded
    assert not native.can_generate_from_prefix(batch)
    prefix = native.prefix_cache(batch, upto=int(batch.layout.positions("gate")[1]))
    with pytest.raises(VLMInputError, match="cannot generate from a prefix"):
        native.generate(batch, prefix=prefix)


# ---------------------------------------------------------------------- conditions
def test_condition_names_windows_and_seeded_draws(native):
    names = [c.name for c in parse_conditions("baseline,gate,image->text,random,gate@last2")]
    assert names == ["baseline", "gate", "image->text", "random", "gate@last2"]
    random = parse_conditions("random")[0]
    assert random.run_names(TASKS["vqav2"]) == [f"random#{d}" for d in range(5)]
    assert random.run_names(TASKS["coco-captions"]) == [f"random#{d}" for d in range(3)]
    assert random.run_names(TASKS["imagenet-chi"]) == ["random"]
    assert [c.name for c in progressive_conditions(4, [0, 1, 4])] == [
        "baseline",
        "gate@last1",
        "gate@last4",
    ]
    with pytest.raises(VLMInputError, match="unknown condition"):
        parse_conditions("baseline,gates")
    # a draw depends on the item, not on the batch it lands in
    batch = _batch(native, 3)
    ids = ["a", "b", "c"]
    ctx = ConditionContext(4, 1, tuple(item_seed(0, 1, i) for i in ids))
    ko = random.build(batch, ctx)
    assert len(ko) == 1 and ko.earliest >= 2
    together = select(random_image_tokens(10, list(ctx.seeds)), batch.layout)
    single = select(random_image_tokens(10, [item_seed(0, 1, "b")] * 3), batch.layout)
    assert torch.equal(together[1], single[1]) and not torch.equal(together[0], together[1])
    assert int(together[0].sum()) == 10
    # the paper's post-softmax zero by default (hooks on the pattern), the pre-softmax mask
    # on request (hooks on the scores), the same edges as the interventions' own knockouts
    window = parse_conditions("gate@last2")[0].build(batch, ConditionContext(4))
    assert [name for name, _ in window] == [hooks.pattern(2), hooks.pattern(3)]
    masked = parse_conditions("gate@last2", "mask")[0].build(batch, ConditionContext(4))
    assert [name for name, _ in masked] == [hooks.attn_scores(2), hooks.attn_scores(3)]
    with torch.no_grad():
        for mode, built in (("zero", window), ("mask", masked)):
            own = gate_knockout(batch, layers=[2, 3], mode=mode)
            with native.hooks(fwd_hooks=built):
                ours = native(batch)
            with native.hooks(fwd_hooks=own):
                theirs = native(batch)
            assert torch.equal(ours, theirs)
        with native.hooks(fwd_hooks=window):
            zero = native(batch)
        with native.hooks(fwd_hooks=masked):
            mask = native(batch)
    assert not torch.equal(zero, mask)  # the two modes are different interventions


# ---------------------------------------------------------------------- resumable runs
def test_a_killed_run_resumes_to_the_table_of_an_uninterrupted_one(nonnative, vqa_folder, tmp_path):
    items = TASKS["vqav2"].read(vqa_folder, limit=10)
    conditions = "baseline,gate,random"
    whole = evaluate(
        nonnative, "vqav2", items, conditions, out=tmp_path / "whole", batch_size=4, progress=False
    )

    class Killed(Exception):
        pass

    written = []

    def kill_after_13(row):
        written.append(row)
        if len(written) == 13:
            raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        evaluate(
            nonnative,
            "vqav2",
            items,
            conditions,
            out=out,
            batch_size=4,
            progress=False,
            on_row=kill_after_13,
        )
    log = out / "predictions.jsonl"
    assert len(log.read_text().splitlines()) == 1 + 13
    with log.open("a") as f:
        f.write('{"id": "cut off by the kil')  # a row torn by SIGKILL
    resumed_rows = []
    resumed = evaluate(
        nonnative,
        "vqav2",
        items,
        conditions,
        out=out,
        batch_size=4,
        progress=False,
        on_row=resumed_rows.append,
    )
    assert resumed.table() == whole.table()
    runs = 1 + 1 + 5
    assert len(resumed_rows) == len(items) * runs - 13  # the done rows were skipped
    lines = [json.loads(x) for x in log.read_text().splitlines()[1:]]
    assert len(lines) == len(items) * runs
    assert len({(r["id"], r["run"]) for r in lines}) == len(lines)


def test_a_log_of_another_run_is_refused(nonnative, vqa_folder, tmp_path):
    items = TASKS["vqav2"].read(vqa_folder, limit=4)
    evaluate(nonnative, "vqav2", items, "baseline", out=tmp_path, progress=False)
    with pytest.raises(StoreConfigError, match="conditions: stored"):
        evaluate(nonnative, "vqav2", items, "baseline,gate", out=tmp_path, progress=False)
    with pytest.raises(StoreConfigError, match="knockout_mode: stored"):
        evaluate(
            nonnative,
            "vqav2",
            items,
            "baseline",
            out=tmp_path,
            progress=False,
            knockout_mode="mask",
        )
    with pytest.raises(StoreConfigError, match="model: stored"):
        evaluate(
            nonnative, "vqav2", items, "baseline", out=tmp_path, progress=False, model_name="other"
        )
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "predictions.jsonl").write_text("not a log\n")
    with pytest.raises(StoreConfigError, match="not a vlm_lens predictions log"):
        PredictionLog.open(tmp_path / "x" / "predictions.jsonl", {"task": "t"})


# ---------------------------------------------------------------------- χ^out
def test_chi_out_reads_the_last_token_final_residual(native, tmp_path):
    from vlm_lens.evaluate.fixtures import write_class_folders

    folder = write_class_folders(tmp_path, n_per_class=4)
    items = TASKS["imagenet-chi"].read(folder)
    result = evaluate(
        native, "imagenet-chi", items, "baseline,gate", k=3, progress=False, out=tmp_path / "out"
    )
    rows = [
        json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()[1:]
    ]
    first = next(r for r in rows if r["run"] == "gate")
    item = next(i for i in items if i.id == first["id"])
    from vlm_lens.data.examples import load_image
    from vlm_lens.evaluate.prompts import item_prompt

    batch = native.prepare(
        images=load_image(item.image),
        text=item_prompt(native, "organism:native", TASKS["imagenet-chi"], item),
    )
    name = hooks.resid_post(native.cfg.n_layers - 1)
    with native.hooks(fwd_hooks=gate_knockout(batch, mode="zero")):
        _, cache = native.run_with_cache(batch, names_filter=name)
    expected = cache[name][0, -1]
    assert torch.allclose(torch.tensor(first["representation"]), expected, atol=1e-5)
    assert 0.0 <= result.scores["gate"] <= 1.0 and 0.0 <= result.scores["baseline"] <= 1.0


# ---------------------------------------------------------------------- CLI and report
def test_cli_writes_the_table_and_rejects_bad_data(vqa_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = [
        "evaluate",
        "vqav2",
        "--data",
        str(vqa_folder),
        "--model",
        "organism:nonnative",
        "--limit",
        "5",
        "--conditions",
        "baseline,image->text",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    table = json.loads((out / "table.json").read_text())
    assert {"task", "model", "metric", "n", "scores"} <= set(table)
    assert table["task"] == "vqav2" and table["n"] == 5 and table["metric"] == "vqa_accuracy"
    assert list(table["scores"]) == ["baseline", "image->text"]
    assert "| organism:nonnative | vqav2 |" in (out / "table.md").read_text()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1 + 5 * 2
    assert load_tables(tmp_path) == [table]
    capsys.readouterr()
    missing = [
        "evaluate",
        "vqav2",
        "--data",
        str(tmp_path / "nothing"),
        "--model",
        "organism:nonnative",
        "--out",
        str(tmp_path / "bad"),
    ]
    assert main(missing) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlm-lens: error:")
    broken = tmp_path / "broken"
    shutil.copytree(vqa_folder, broken)
    (broken / "v2_mscoco_val2014_annotations.json").write_text('{"annotations": 3}')
    assert main([*missing[:3], str(broken), *missing[4:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v2_mscoco_val2014_annotations.json" in err[0], err
    assert main(["narrow-gate", "--evaluation", str(tmp_path / "nothing")]) == 2
    assert "--evaluation" in capsys.readouterr().err
    monkeypatch.setattr(report_html, "_figures", lambda runs: {})  # no narrow-gate runs here
    page = report_html.render_html([], None, {"title": "t", "evaluation": [table]})
    assert "Table 1" in page and "image-&gt;text" in page and "organism:nonnative" in page


def test_user_conditions_and_bad_items(nonnative):
    scenes = world_split("test", 3, seed=2, max_objects=1)
    items = [
        EvalItem(f"s{s.index}", s.image, s.qa[0].question, (s.qa[0].answer,) * 10) for s in scenes
    ]
    blind = {"blind": lambda b: image_to_text_knockout(b, mode="zero") + []}  # not prefix-aware
    result = evaluate(
        nonnative, "vqav2", items, {"baseline": lambda b: [], **blind}, progress=False
    )
    assert set(result.scores) == {"baseline", "blind"}
    assert list(result.to_frame()["condition"]) == ["baseline", "blind"]
    with pytest.raises(VLMInputError, match="repeat"):
        evaluate(nonnative, "vqav2", [items[0], items[0]], "baseline", progress=False)
    with pytest.raises(VLMInputError, match="does not open"):
        evaluate(
            nonnative, "vqav2", [EvalItem("x", "/no/such.jpg", "q?")], "baseline", progress=False
        )


def test_prompts_own_formats_paper_templates_and_chat_templates():
    from types import SimpleNamespace

    from vlm_lens.evaluate.prompts import item_prompt

    item = EvalItem("q", "x.jpg", "what colour is it?", ("red",) * 10)
    seen = []

    class Chat:
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, add_generation_prompt):
            seen.append((messages, add_generation_prompt))
            return "USER: <img> " + messages[0]["content"][1]["text"] + " ASSISTANT:"

    plain = SimpleNamespace(processor=SimpleNamespace(), image_placeholder="<img>")
    chat = SimpleNamespace(processor=Chat(), image_placeholder="<img>")
    vqa, chi = TASKS["vqav2"], TASKS["imagenet-chi"]
    assert item_prompt(plain, "organism:native", vqa, item) == "<img>what colour is it?"
    assert item_prompt(chat, "organism:native", vqa, item) == "<img>what colour is it?"
    paper = "what colour is it?\nAnswer the question using a single word or phrase."
    assert item_prompt(plain, "some/model", vqa, item) == "<img>" + paper
    assert item_prompt(chat, "some/model", vqa, item) == f"USER: <img> {paper} ASSISTANT:"
    assert seen[-1][0][0]["content"][0] == {"type": "image"} and seen[-1][1] is True
    assert item_prompt(chat, "some/model", chi, item) == "<img>This is a picture of a"
    caption = item_prompt(plain, "some/model", TASKS["flickr30k"], item)
    assert caption == "<img>Provide a one-sentence caption for the provided image."


def test_multi_axis_positions_generate_on_the_whole_prompt(tmp_path):
    from vlm_lens.evaluate.fixtures import write_vqav2
    from vlm_lens.testing import build_tiny

    tiny = build_tiny("qwen2_vl")  # [3, batch, pos] rotary positions
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    items = TASKS["vqav2"].read(write_vqav2(tmp_path, n_images=2, max_objects=1), limit=6)
    prompts = [question_prompt(i.question, model.image_placeholder) for i in items[:2]]
    from vlm_lens.data.examples import load_image

    batch = model.prepare(images=[load_image(i.image) for i in items[:2]], text=prompts[:1] * 2)
    assert not model.can_generate_from_prefix(batch)
    with pytest.raises(VLMInputError, match="cannot generate from a prefix"):
        model.generate(batch, prefix=model.prefix_cache(batch, upto=batch.input_ids.shape[1] - 1))
    shared = evaluate(
        model, "vqav2", items, "baseline,gate,image->text", model_name="tiny", progress=False
    )
    plain = evaluate(
        model,
        "vqav2",
        items,
        "baseline,gate,image->text",
        model_name="tiny",
        progress=False,
        reuse_prefix=False,
    )
    assert shared.table() == plain.table()
    assert shared.predictions["prediction"].tolist() == plain.predictions["prediction"].tolist()


def test_cli_stacking_options_change_the_calls_not_the_table(vqa_folder, tmp_path, capsys):
    def run(name, *extra):
        args = ["evaluate", "vqav2", "--data", str(vqa_folder), "--model", "organism:nonnative"]
        args += ["--limit", "3", "--conditions", "baseline,random", "--quiet"]
        assert main([*args, "--out", str(tmp_path / name), *extra]) == 0
        return json.loads((tmp_path / name / "table.json").read_text())["scores"]

    stacked = run("stacked", "--max-rows", "4")
    plain = run("plain", "--no-stack-runs", "--no-reuse-prefix")
    assert stacked == plain
    capsys.readouterr()
    bad = ["evaluate", "vqav2", "--data", str(vqa_folder), "--model", "organism:nonnative"]
    assert main([*bad, "--max-rows", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--max-rows" in capsys.readouterr().err
