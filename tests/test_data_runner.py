"""vlm_lens.data: `collect` against the full cache, seeded draws, the store, resume after a kill.

Every value `collect` returns is checked bit for bit against ``run_with_cache`` read at
positions computed independently from the layout. The resume test kills a real subprocess with
SIGKILL after its second chunk and checks that the restarted run gives the same store as an
uninterrupted one.
"""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from _runner_child import RUN_KWARGS, setup
from conftest import Wrapped

from vlm_lens import HookedVLM, VLMInputError, hooks
from vlm_lens.data import runner as runner_module
from vlm_lens.data.collect import Probe, collect
from vlm_lens.data.examples import Example, make_examples
from vlm_lens.data.runner import run_dataset
from vlm_lens.data.store import ActivationStore
from vlm_lens.errors import StoreConfigError
from vlm_lens.positions import after

CHILD = Path(__file__).parent / "_runner_child.py"
SITES = hooks.lm_filter(
    "hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_z"
)


@pytest.fixture(scope="module")
def llava() -> tuple[HookedVLM, list[Example], list[Probe]]:
    """The child script's model, dataset and probes, built in this process."""
    return setup()


def _assert_stores_equal(a: ActivationStore, b: ActivationStore) -> None:
    assert a.complete and b.complete
    assert a.names == b.names and a.names
    for name in a.names:
        x, y = a.load(name), b.load(name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.labels == b.labels and a.ids == b.ids and a.example_indices == b.example_indices
    assert a.fingerprint == b.fingerprint


# ---------------------------------------------------------------------- collect vs the full cache
def test_collect_equals_full_cache_at_independent_positions(wrapped: Wrapped) -> None:
    model = wrapped.model
    batch = wrapped.batch(3, padding_side="left")  # prompts of 3 lengths, left-padded
    mask = batch.attention_mask
    assert mask is not None and (mask == 0).any(), "the batch must have padding"
    n_layers = model.cfg.n_layers
    probes = [
        Probe("gate", site="resid_post"),
        Probe("image", site="resid_pre", positions="image", reduce="mean", layers=[n_layers - 1]),
        Probe("text", site="mlp_out", positions=after("text", "image"), reduce="random"),
        Probe("last", site="attn_out", positions="last", layers=[-1]),
        Probe("z", site="z", positions="gate", layers=[0]),
    ]
    tokens = [3, 40, 100]
    out = collect(model, batch, probes, seed=5, example_indices=[10, 11, 12], logit_tokens=tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(batch, names_filter=SITES)

    layout = batch.layout
    first_real = [int(row.nonzero()[0]) for row in mask]
    for b in range(3):
        (gate,) = layout.positions("gate")[b].tolist()
        image = layout.positions("image")[b]
        (last,) = layout.positions("last")[b].tolist()
        text = layout.positions("text", after="image")[b].tolist()
        drawn = int(out["text.position"][b]) + first_real[b]
        assert drawn in text
        assert int(out["gate.position"][b]) + first_real[b] == gate
        for i, layer in enumerate(range(n_layers)):
            assert torch.equal(out["gate"][b, i], cache[hooks.resid_post(layer)][b, gate])
            assert torch.equal(out["text"][b, i], cache[hooks.mlp_out(layer)][b, drawn])
        mean = cache[hooks.resid_pre(n_layers - 1)][b, image].mean(dim=0)
        assert torch.equal(out["image"][b, 0], mean)
        assert torch.equal(out["last"][b, 0], cache[hooks.attn_out(n_layers - 1)][b, last])
        assert torch.equal(out["z"][b, 0], cache[hooks.z(0)][b, gate])
        assert torch.equal(out["logits"][b], logits[b, last, tokens])
    d = model.cfg.d_model
    assert out["gate"].shape == (3, n_layers, d) and out["gate"].dtype == torch.float32
    assert out["image"].shape == (3, 1, d) and "image.position" not in out
    assert out["z"].shape[:2] == (3, 1) and out["z"].ndim == 4  # [batch, layers, head, d_head]


def test_collect_stopping_early_gives_the_same_values(wrapped: Wrapped) -> None:
    """With only layer-0 probes and no logits the forward stops after block 0 (stop_at_layer);
    the values are still those of the full run."""
    model = wrapped.model
    batch = wrapped.batch(2, padding_side="left")
    calls: list[dict[str, Any]] = []
    run = model.run_with_hooks

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return run(*args, **kwargs)

    model.run_with_hooks = spy  # type: ignore[method-assign]
    try:
        out = collect(
            model, batch, [Probe("g", layers=[0]), Probe("i", "attn_out", "image", "mean", [0])]
        )
    finally:
        del model.run_with_hooks
    assert calls[0].get("stop_at_layer") == 1
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=SITES)
    for b in range(2):
        (gate,) = batch.layout.positions("gate")[b].tolist()
        image = batch.layout.positions("image")[b]
        assert torch.equal(out["g"][b, 0], cache[hooks.resid_post(0)][b, gate])
        assert torch.equal(out["i"][b, 0], cache[hooks.attn_out(0)][b, image].mean(dim=0))


def test_mean_probes_read_the_same_values_by_slice_and_by_gather(wrapped: Wrapped) -> None:
    """`collect` reads a mean over one run of positions as a slice view (one for the whole batch
    when every row has the same run) and gathers otherwise; each equals the cache's own mean."""
    model = wrapped.model

    def every_other(layout: Any) -> torch.Tensor:  # image positions with gaps: the gather path
        return layout.mask("image") & (torch.arange(layout.shape[1]) % 2 == 0)

    probes = [
        Probe("run", site="resid_post", positions="image", reduce="mean", layers=[0, -1]),
        Probe("gaps", site="resid_post", positions=every_other, reduce="mean", layers=[0, -1]),
    ]
    for batch in (wrapped.batch(2), wrapped.batch(3, padding_side="left")):
        out = collect(model, batch, probes)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=SITES)
        gaps = every_other(batch.layout)
        for b in range(batch.layout.shape[0]):
            image = batch.layout.positions("image")[b]
            for i, layer in enumerate((0, model.cfg.n_layers - 1)):
                resid = cache[hooks.resid_post(layer)][b]
                assert torch.equal(out["run"][b, i], resid[image].mean(dim=0))
                assert torch.equal(out["gaps"][b, i], resid[gaps[b].nonzero().flatten()].mean(0))


# ---------------------------------------------------------------------- seeded draws
def test_random_draw_depends_on_seed_and_index_not_on_batching(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, probes = llava
    examples = examples[:7]
    kwargs = {**RUN_KWARGS, "logit_tokens": None}
    stores = {}
    for batch_size in (2, 7):
        kwargs["batch_size"] = batch_size
        stores[batch_size] = run_dataset(
            model, examples, probes, tmp_path / f"b{batch_size}", **kwargs
        )
    drawn = stores[2].load("text.position")
    assert drawn.shape == (7,)
    assert torch.equal(stores[7].load("text.position"), drawn)
    # same positions, so the same vectors up to the numerics of other padding
    torch.testing.assert_close(stores[7].load("text"), stores[2].load("text"))
    # a probe drawing image tokens: 16 candidates in each of 7 examples
    image_probe = [Probe("img", positions="image", reduce="random", layers=[0])]
    model_inputs = [e.load_images() for e in examples]
    prompts = [
        str(RUN_KWARGS["prompt"]).format(image=model.image_placeholder, text=e.text)
        for e in examples
    ]
    batch = model.prepare(images=model_inputs, text=prompts, padding_side="left")
    a = collect(model, batch, image_probe, seed=7)["img.position"]
    assert torch.equal(a, collect(model, batch, image_probe, seed=7)["img.position"])
    b = collect(model, batch, image_probe, seed=8)["img.position"]
    shifted = collect(model, batch, image_probe, seed=7, example_indices=range(1, 8))
    assert not torch.equal(a, b)  # 16**-7 odds of equality, and the draws are fixed
    assert not torch.equal(a, shifted["img.position"])
    # a different draw number gives an independent pick; the same one the same pick
    redraw = [Probe("img", positions="image", reduce="random", layers=[0], draw=1)]
    assert not torch.equal(a, collect(model, batch, redraw, seed=7)["img.position"])
    other_site = [Probe("x", site="attn_out", positions="image", reduce="random", layers=[1])]
    assert torch.equal(a, collect(model, batch, other_site, seed=7)["x.position"])


# ---------------------------------------------------------------------- resume after a kill
def test_run_killed_after_two_chunks_resumes_to_the_uninterrupted_result(
    llava: tuple[HookedVLM, list[Example], list[Probe]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, examples, probes = llava
    killed = tmp_path / "killed"
    proc = subprocess.run(
        [sys.executable, str(CHILD), str(killed), "1"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    partial = ActivationStore(killed)
    assert partial.completed_chunks == [0, 1] and not partial.complete
    assert len(partial) == 6 and partial.example_indices == list(range(6))
    assert partial.load("gate", allow_partial=True).shape[0] == 6
    with pytest.raises(StoreConfigError, match="incomplete"):
        partial.load("gate")
    # what a kill during the write of chunk 2 leaves behind: a half-written temporary file
    leftover = killed / ".chunk_000002.safetensors.12345.tmp"
    leftover.write_bytes(b"\x00garbage")
    assert ActivationStore(killed).completed_chunks == [0, 1]

    bars: list[dict[str, Any]] = []
    real_tqdm = runner_module.tqdm

    def recording_tqdm(*args: Any, **kwargs: Any) -> Any:
        bars.append(kwargs)
        return real_tqdm(*args, **kwargs)

    monkeypatch.setattr(runner_module, "tqdm", recording_tqdm)
    written: list[int] = []
    resumed = run_dataset(
        model,
        examples,
        probes,
        killed,
        resume=True,
        on_chunk_written=lambda chunk, store: written.append(chunk),
        **RUN_KWARGS,
    )
    assert written == [2, 3]  # the chunks on disk were skipped
    assert bars[-1]["total"] == 10 and bars[-1]["initial"] == 6
    assert not leftover.exists()

    fresh = run_dataset(model, examples, probes, tmp_path / "fresh", **RUN_KWARGS)
    assert set(fresh.names) == {"gate", "gate.position", "image", "text", "text.position", "logits"}
    _assert_stores_equal(resumed, fresh)
    _assert_stores_equal(ActivationStore(killed), fresh)  # reopened from disk
    assert fresh.labels == [e.label for e in examples] and fresh.ids == [e.id for e in examples]
    # streaming gives the same arrays, chunk by chunk in order
    chunks = list(fresh.iter_chunks(["gate"]))
    assert [idx for idx, _ in chunks] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert torch.equal(torch.cat([t["gate"] for _, t in chunks]), fresh.load("gate"))
    assert torch.equal(fresh.load("gate", layers=[1]), fresh.load("gate")[:, [1]])


def test_resuming_with_another_config_raises(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, probes = llava
    examples = examples[:4]
    kwargs = {**RUN_KWARGS, "batch_size": 2}
    run_dataset(model, examples, probes, tmp_path, **kwargs)
    changes: list[tuple[str, dict[str, Any], list[Example], list[Probe]]] = [
        ("seed", {**kwargs, "seed": 8}, examples, probes),
        ("chunk_size", {**kwargs, "batch_size": 3}, examples, probes),
        ("probes", kwargs, examples, probes[:2]),
        ("logit_tokens", {**kwargs, "logit_tokens": [5]}, examples, probes),
        ("n_examples", kwargs, examples[:3], probes),
        ("examples", kwargs, [*examples[:3], Example(examples[3].images, "Other?")], probes),
        ("examples", kwargs, make_examples([e.images for e in examples], "Say?"), probes),
    ]
    for key, changed, exs, prbs in changes:
        with pytest.raises(StoreConfigError, match=f"{key}: stored") as info:
            run_dataset(model, exs, prbs, tmp_path, **changed)
        assert "overwrite=True" in str(info.value)
    with pytest.raises(StoreConfigError, match="resume=True"):
        run_dataset(model, examples, probes, tmp_path, resume=False, **kwargs)
    # the same run resumes (nothing to do) and overwrite replaces the run
    assert run_dataset(model, examples, probes, tmp_path, **kwargs).complete
    replaced = run_dataset(model, examples, probes[:1], tmp_path, overwrite=True, **kwargs)
    assert replaced.complete and replaced.names == ["gate", "gate.position", "logits"]
    assert replaced.config["probes"][0]["name"] == "gate" and len(replaced.config["probes"]) == 1


# ---------------------------------------------------------------------- bounded memory
def test_runner_keeps_nothing_from_finished_chunks(
    llava: tuple[HookedVLM, list[Example], list[Probe]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Images (given as paths) are opened per chunk, and after each chunk is written nothing
    built for it (images, batch, collected tensors) is still alive; the collected arrays have
    no position axis."""
    model, examples, probes = llava
    paths = []
    for i, example in enumerate(examples[:7]):
        paths.append(tmp_path / f"{i}.png")
        example.images.save(paths[-1])  # type: ignore[union-attr]
    on_disk = make_examples(paths, [e.text for e in examples[:7]])
    refs: dict[str, list[weakref.ref]] = {"image": [], "batch": [], "tensor": []}

    from vlm_lens.data import examples as examples_module

    load_image = examples_module.load_image

    def recording_load(image: Any) -> Any:
        out = load_image(image)
        refs["image"].append(weakref.ref(out))
        return out

    prepare = model.prepare

    def recording_prepare(*args: Any, **kwargs: Any) -> Any:
        out = prepare(*args, **kwargs)
        refs["batch"].append(weakref.ref(out))
        return out

    def recording_collect(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        out = collect(*args, **kwargs)
        for name, tensor in out.items():
            refs["tensor"].append(weakref.ref(tensor))
            if not name.endswith(".position") and name != "logits":
                assert tensor.ndim == 3, (name, tensor.shape)  # [chunk, layers, d_model]
        return out

    def no_cache(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the runner must reduce inside hooks, never cache")

    monkeypatch.setattr(examples_module, "load_image", recording_load)
    monkeypatch.setattr(model, "prepare", recording_prepare)
    monkeypatch.setattr(model, "run_with_cache", no_cache)
    monkeypatch.setattr(runner_module, "collect", recording_collect)
    seen: list[tuple[int, int]] = []

    def check(chunk: int, store: ActivationStore) -> None:
        gc.collect()
        alive = {k: sum(r() is not None for r in v) for k, v in refs.items()}
        assert alive == {"image": 0, "batch": 0, "tensor": 0}, (chunk, alive)
        seen.append((chunk, len(refs["image"])))

    store = run_dataset(
        model, on_disk, probes, tmp_path / "store", on_chunk_written=check, **RUN_KWARGS
    )
    assert seen == [(0, 3), (1, 6), (2, 7)]  # images opened chunk by chunk, never ahead
    d = model.cfg.d_model
    assert store.load("gate").shape == (7, model.cfg.n_layers, d)
    assert store.load("image").shape == (7, 1, d)


# ---------------------------------------------------------------------- bad input
def test_example_without_placeholder_names_the_example(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, probes = llava
    prompts = [f"USER: <image>\n{e.text}" for e in examples[:5]]
    prompts[3] = "USER: no image here"
    bad = make_examples([e.images for e in examples[:5]], prompts, ids=list("abcde"))
    with pytest.raises(VLMInputError, match=r"example 3 \(id='d'\).*no image here.*<image>"):
        run_dataset(model, bad, probes, tmp_path / "s", batch_size=2, progress=False)
    assert not (tmp_path / "s").exists()  # checked before anything runs or is written
    with pytest.raises(VLMInputError, match="names 'caption'"):
        run_dataset(model, bad, probes, tmp_path / "s", prompt="{image} {caption}", progress=False)


def test_bad_probes_raise_clear_errors(
    llava: tuple[HookedVLM, list[Example], list[Probe]], tmp_path: Path
) -> None:
    model, examples, _ = llava
    with pytest.raises(ValueError, match="unknown site 'resid_posts'.*resid_post"):
        Probe("x", site="resid_posts")
    with pytest.raises(ValueError, match="unknown role 'gat'.*gate"):
        Probe("x", positions="gat")
    with pytest.raises(ValueError, match="unknown role 'imag'"):
        Probe("x", positions=["image", "imag"])
    with pytest.raises(ValueError, match="unknown reduce 'max'"):
        Probe("x", reduce="max")
    with pytest.raises(ValueError, match="not per position"):
        Probe("x", site="pattern")
    with pytest.raises(ValueError, match="probe name"):
        Probe("a.b")
    kwargs = {**RUN_KWARGS, "batch_size": 2}
    data = examples[:2]
    with pytest.raises(ValueError, match="not a hook point"):
        run_dataset(
            model, data, [Probe("x", site=lambda layer: f"blocks.{layer}.nope")], tmp_path, **kwargs
        )
    with pytest.raises(ValueError, match="asks for layer 5"):
        run_dataset(model, data, [Probe("x", layers=[5])], tmp_path, **kwargs)
    with pytest.raises(ValueError, match="unique"):
        run_dataset(model, data, [Probe("x"), Probe("x", positions="last")], tmp_path, **kwargs)
    with pytest.raises(VLMInputError, match=r"16 position\(s\) with 'image' in example 0.*mean"):
        run_dataset(model, data, [Probe("x", positions="image")], tmp_path / "e", **kwargs)
    with pytest.raises(StoreConfigError, match="not an activation store"):
        ActivationStore(tmp_path / "nowhere")
