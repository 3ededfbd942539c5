"""Arguments that used to run on silently (issue 16) now raise `VLMInputError` naming the
problem and the fix, before or at the hook; no hook outlives the error."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from vlm_lens import HookedVLM, VLMInputError, hooks
from vlm_lens.analysis.knockout_effect import knockout_effect
from vlm_lens.analysis.patching_sweep import PatchPair, patching_sweep
from vlm_lens.interventions import knockout, random_image_knockout, steer
from vlm_lens.testing import build_tiny, sample_image, save_tiny


@pytest.fixture(scope="module")
def model_and_batch() -> tuple[HookedVLM, Any]:
    tiny = build_tiny("llava")
    model = HookedVLM.from_hf(tiny.model, tiny.processor)
    images = [sample_image(seed=i, size=tiny.image_size) for i in range(2)]
    batch = model.prepare(images=images, text=[tiny.prompt, tiny.prompt + " more"])
    return model, batch


def _no_hooks_left(model: HookedVLM) -> bool:
    return not any(
        hp.fwd_hooks or hp.bwd_hooks or hp._forward_hooks or hp._backward_hooks
        for hp in model.hook_dict.values()
    )


@pytest.mark.bad_input_types
@pytest.mark.parametrize("vector", [torch.tensor(2.0), torch.tensor([2.0])], ids=["0d", "1"])
def test_steering_vector_must_be_d_model(model_and_batch: Any, vector: torch.Tensor) -> None:
    model, batch = model_and_batch
    d_model = model.cfg.d_model
    if vector.ndim == 0:
        with pytest.raises(VLMInputError, match=r"one \[d_model\] tensor.*torch.ones\(d_model\)"):
            steer(batch, vector, layers=0)
        return
    hooks_ = steer(batch, vector, layers=0)  # [1]: only the model knows d_model
    with pytest.raises(VLMInputError, match=f"1 dimensions but the site holds {d_model}"):
        model.run_with_hooks(batch, fwd_hooks=hooks_)
    assert _no_hooks_left(model)


def test_negative_k_is_refused(model_and_batch: Any) -> None:
    _, batch = model_and_batch
    with pytest.raises(ValueError, match="k must be a whole number of image tokens >= 0"):
        random_image_knockout(batch, k=-1)


def test_heads_past_the_layer_are_refused(model_and_batch: Any) -> None:
    model, batch = model_and_batch
    n_heads = model.cfg.n_heads
    ko = knockout(batch, queries="text", keys="image", layers=0, heads=99, mode="zero")
    with pytest.raises(VLMInputError, match=rf"heads \[99\] do not exist; .*{n_heads} heads"):
        model.run_with_hooks(batch, fwd_hooks=ko)
    assert _no_hooks_left(model)
    last = knockout(batch, queries="text", keys="image", layers=0, heads=n_heads - 1, mode="zero")
    with torch.no_grad():
        model.run_with_hooks(batch, fwd_hooks=last)  # the last head exists


@pytest.mark.parametrize("where", ["source_token", "target_token"])
def test_patch_pair_token_past_the_vocabulary(model_and_batch: Any, where: str) -> None:
    model, batch = model_and_batch
    bad = model.cfg.d_vocab
    tokens = {"source_token": 1, "target_token": 2, where: bad}
    pair = PatchPair(batch, batch, **tokens)
    with pytest.raises(VLMInputError, match=rf"PatchPair.{where} holds token id\(s\) \[{bad}\]"):
        patching_sweep(model, pair, layers=[0])
    ok = PatchPair(batch, batch, **{**tokens, where: bad - 1})  # the last id is a token
    assert patching_sweep(model, ok, layers=[0]).n_pairs == len(batch)


@pytest.mark.parametrize("where", ["source_token", "target_token"])
@pytest.mark.parametrize("bad", [-1, torch.tensor([3, -1])], ids=["int", "tensor"])
def test_patch_pair_negative_token_is_refused_when_built(
    model_and_batch: Any, where: str, bad: Any
) -> None:
    _, batch = model_and_batch
    tokens = {"source_token": 1, "target_token": 2, where: bad}
    with pytest.raises(VLMInputError, match=rf"PatchPair.{where} holds a negative token id"):
        PatchPair(batch, batch, **tokens)


def test_knockout_targets_outside_the_vocabulary_fail_before_running(
    model_and_batch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, batch = model_and_batch
    calls = []
    monkeypatch.setattr(model, "run_with_hooks", lambda *a, **k: calls.append(1))
    with pytest.raises(VLMInputError, match=r"targets holds token id\(s\) \[1000000\]"):
        knockout_effect(model, batch, targets=[1, 10**6])
    assert calls == []


@pytest.mark.parametrize("how", ["run_with_hooks", "hooks-context", "generate"])
def test_a_hook_returning_another_shape_raises_at_the_hook(model_and_batch: Any, how: str) -> None:
    model, batch = model_and_batch
    name = hooks.resid_pre(1)
    fwd = [(name, lambda tensor, hook: tensor[:1])]  # drops a sequence
    with (
        pytest.raises(VLMInputError, match=rf"{name}: a hook returned shape \(1, "),
        torch.no_grad(),
    ):
        if how == "run_with_hooks":
            model.run_with_hooks(batch, fwd_hooks=fwd)
        elif how == "hooks-context":
            with model.hooks(fwd_hooks=fwd):
                model(batch)
        else:
            model.generate(batch, max_new_tokens=2, fwd_hooks=fwd)
    assert _no_hooks_left(model)
    same = [(name, lambda tensor, hook: tensor * 1.0)]
    with torch.no_grad():
        assert torch.equal(model.run_with_hooks(batch, fwd_hooks=same), model(batch))


def test_a_batch_of_another_model_names_the_model_and_the_fix(model_and_batch: Any) -> None:
    model, _ = model_and_batch
    other_tiny = build_tiny("chameleon")
    other = HookedVLM.from_hf(other_tiny.model, other_tiny.processor)
    text_only = other.prepare(text="hello world")  # ids past the llava tiny's embeddings
    assert int(text_only.input_ids.max()) >= model.adapter.n_embeddings
    with pytest.raises(VLMInputError, match=r"made by another model's processor.*model\.prepare"):
        model(text_only)
    image = sample_image(size=other_tiny.image_size)
    with_image = other.prepare(images=image, text=other_tiny.prompt)
    with pytest.raises(VLMInputError, match=r"made by another model's processor"), torch.no_grad():
        model.run_with_hooks(with_image, fwd_hooks=[])
    # the same ids built by hand carry no origin: the embedding range names the problem
    n_embeddings = model.adapter.n_embeddings
    bad = sorted(set(text_only.input_ids[text_only.input_ids >= n_embeddings].tolist()))
    with pytest.raises(
        VLMInputError,
        match=rf"token id\(s\) {re.escape(str(bad[:5]))} outside this model's {n_embeddings} "
        r"embeddings: the batch was made by another model's tokenizer",
    ):
        model.batch_from_inputs(dict(text_only.inputs))


def test_a_batch_of_another_tokenizer_of_the_same_family(model_and_batch: Any) -> None:
    model, batch = model_and_batch
    tiny = build_tiny("llava")
    processor = copy.deepcopy(tiny.processor)
    processor.tokenizer.add_tokens(["<other>"])  # same family, another vocabulary
    other = HookedVLM.from_hf(tiny.model, processor)
    with pytest.raises(VLMInputError, match="made by another model's processor"):
        other(batch)
    same = HookedVLM.from_hf(tiny.model, copy.deepcopy(tiny.processor))
    with torch.no_grad():  # an equal processor makes batches this model takes
        torch.testing.assert_close(same(batch), model(batch))
    # hand-built ids where '<image>' became another id: not "put '<image>' in the prompt" alone
    placeholder = model.adapter.placeholder_token_id
    ids = batch.input_ids.clone()
    ids[ids == placeholder] = 5
    with pytest.raises(VLMInputError, match=r"if it has one, the input_ids were made by another"):
        model.batch_from_inputs({**batch.inputs, "input_ids": ids})


@pytest.fixture(scope="module")
def saved_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(build_tiny("llava"), tmp_path_factory.mktemp("llava") / "llava")


def test_a_broken_tokenizer_json_raises_at_load_naming_the_file(
    saved_llava: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(saved_llava, folder)
    text = (folder / "tokenizer.json").read_text(encoding="utf-8")
    (folder / "tokenizer.json").write_text(text[:300], encoding="utf-8")
    try:
        json.loads(text[:300])
    except ValueError as error:
        parse_error = str(error)
    with pytest.raises(
        VLMInputError,
        match=rf"{re.escape(str(folder / 'tokenizer.json'))} is not valid JSON "
        rf"\({re.escape(parse_error)}\).*save_pretrained",
    ):
        HookedVLM.from_pretrained(folder)
    data = json.loads(text)
    data["model"] = {"type": "NoSuchModel"}  # valid JSON, not a tokenizer
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(VLMInputError, match=r"processor of .* failed to load from tokenizer.json"):
        HookedVLM.from_pretrained(folder)


def test_a_folder_without_processor_files_warns(saved_llava: Path, tmp_path: Path) -> None:
    folder = tmp_path / "weights-only"
    shutil.copytree(saved_llava, folder)
    for path in folder.iterdir():
        if path.name.startswith(("tokenizer", "processor", "preprocessor")):
            path.unlink()
    with pytest.warns(UserWarning, match="loaded without a processor"):
        model = HookedVLM.from_pretrained(folder)
    assert model.processor is None
