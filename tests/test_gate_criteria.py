"""The "has a gate" measurements (`vlm_lens.experiments.gate_criteria`) against an independent
computation on both organisms, the criteria logic on synthetic values, and the factorial report.

The reference never uses vlm_lens' hooks or generation: a fresh Hugging Face model loaded from
the organism's folder (eager attention) answers by hand-written greedy decoding (a full forward
per new token), with the knockout's blocked edges written into its attention by hand from the
prompt's roles, and the patch written into the input of one decoder layer by a PyTorch hook.
Prompts are grouped by question text, so no batch is padded.
"""

from __future__ import annotations

import importlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import plotly.graph_objects as go
import pytest
import torch
import transformers
from torch import Tensor, nn

from vlm_lens import HookedVLM
from vlm_lens.experiments.gate_criteria import (
    GateMeasurement,
    flip_rates,
    measure_gate,
    patch_pairs,
    write_factorial,
)
from vlm_lens.world import world_split
from vlm_lens.zoo.registry import organism_path
from vlm_lens.zoo.tasks import question_prompt

N_SCENES = 24
KINDS = ("colour", "position", "count")  # position answers are two words; count is at chance
N_PAIRS = 8
NEW_TOKENS = 3  # answer_accuracy's default


@pytest.fixture(scope="module", params=["native", "nonnative"])
def organism(request: pytest.FixtureRequest):
    name = request.param
    model = HookedVLM.from_pretrained(f"organism:{name}")
    hf_class = getattr(transformers, type(model.hf_model).__name__)
    hf = hf_class.from_pretrained(organism_path(name), attn_implementation="eager").eval()
    scenes = [
        replace(s, qa=tuple(q for q in s.qa if q.kind in KINDS))
        for s in world_split("test", N_SCENES, seed=0, max_objects=1)
    ]
    return model, hf, scenes, measure_gate(model, scenes, seed=0, pairs=N_PAIRS)


# ------------------------------------------------------------------ the reference
def _decoder_layers(hf: nn.Module, n_layers: int) -> nn.ModuleList:
    for module in hf.modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == n_layers
            and all(hasattr(m, "self_attn") and hasattr(m, "mlp") for m in module)
            and hasattr(module[0].self_attn, "num_key_value_groups")
        ):
            return module
    raise AssertionError("no decoder layer list found")


@contextmanager
def _hand_knockout(hf: nn.Module, blocked: Tensor | None, layers: set[int]) -> Iterator[None]:
    """HF's eager attention with the `blocked` ``[batch, q, k]`` scores set to the dtype's
    minimum before the softmax, in `layers` (the decoder's attention only)."""
    names = {
        type(m).__module__
        for m in hf.modules()
        if hasattr(m, "layer_idx") and hasattr(m, "num_key_value_groups")
    }
    originals = {n: importlib.import_module(n).eager_attention_forward for n in names}

    def patched(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        n_rep = query.shape[1] // key.shape[1]
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
        q_len, k_len = query.shape[2], key.shape[2]
        low = torch.finfo(query.dtype).min
        if attention_mask is None:
            causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
            attention_mask = torch.zeros(q_len, k_len).masked_fill(~causal, low)[None, None]
        mask = attention_mask[:, :, :, :k_len].expand(query.shape[0], query.shape[1], -1, -1)
        mask = mask.clone()
        if blocked is not None and module.layer_idx in layers:
            mask[blocked[:, None, k_len - q_len : k_len, :k_len].expand_as(mask)] = low
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling + mask
        weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    for n in names:
        importlib.import_module(n).eager_attention_forward = patched
    try:
        yield
    finally:
        for n, fn in originals.items():
            importlib.import_module(n).eager_attention_forward = fn


def _greedy(hf: nn.Module, tokenizer, inputs: dict, hooks: Callable[[], list] = list) -> list[str]:
    """Greedy answers, one full forward per new token, cut at EOS."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    for _ in range(NEW_TOKENS):
        handles = hooks()
        try:
            with torch.no_grad():
                logits = hf(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
        finally:
            for h in handles:
                h.remove()
        nxt = logits.logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    out = []
    for row in ids[:, inputs["input_ids"].shape[1] :].tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return out


def _edges(batch, condition: str) -> Tensor:
    """Blocked ``[batch, q, k]`` edges over the prompt and the new tokens (text), by role."""
    layout = batch.layout
    b_n, length = layout.shape
    total = length + NEW_TOKENS
    roles = [[set(layout.roles_at(b, p)) for p in range(length)] for b in range(b_n)]
    for row in roles:
        row += [{"text"}] * NEW_TOKENS

    def has(names: set[str]) -> Tensor:
        return torch.tensor([[bool(r & names) for r in row] for row in roles])

    if condition == "gate":  # every query, the gate as key
        return has({"gate"})[:, None, :].expand(-1, total, -1).clone()
    # image->text: text after the last image token reads no BOI/image/row-end token
    position = torch.arange(total)
    last_image = torch.tensor(
        [max(p for p in range(length) if "image" in roles[b][p]) for b in range(b_n)]
    )
    queries = has({"text"}) & (position[None] > last_image[:, None])
    keys = has({"image_start", "image", "image_row_end"})
    return queries[:, :, None] & keys[:, None, :]


def _by_question(items):
    groups = defaultdict(list)
    for item in items:
        groups[item[1].question].append(item)
    return groups.values()


def _reference_accuracy(model, hf, scenes, condition: str) -> dict[str, float]:
    n = model.cfg.n_layers
    layers = {
        "gate": set(range(n)),
        "image->text": set(range(n)),
        "image->text, layer 0": {0},
        "image->text, layers 1+": set(range(1, n)),
    }
    hits: dict[str, list[bool]] = defaultdict(list)
    for group in _by_question([(s, qa) for s in scenes for qa in s.qa]):
        prompt = question_prompt(group[0][1].question, model.image_placeholder)
        batch = model.prepare(images=[s.image for s, _ in group], text=[prompt] * len(group))
        assert not batch.layout.mask("pad").any()
        blocked = None
        if condition != "none":
            blocked = _edges(batch, "gate" if condition == "gate" else "image->text")
        with _hand_knockout(hf, blocked, layers.get(condition, set())):
            answers = _greedy(hf, model.tokenizer, batch.inputs)
        for (_, qa), a in zip(group, answers, strict=True):
            hits[qa.kind].append(a == qa.answer)
    return {k: sum(v) / len(v) for k, v in hits.items()}


def _reference_flips(model, hf, scenes, pairs, role: str) -> list[float]:
    """Per layer: patch the source's residual at the input of that decoder layer, at the
    position of `role`, into the target; fraction of new answers equal to the source's."""
    layers = _decoder_layers(hf, model.cfg.n_layers)
    flips: list[list[bool]] = [[] for _ in layers]
    for group in _by_question([(p, p[3]) for p in pairs]):
        prompt = question_prompt(group[0][1].question, model.image_placeholder)
        source = model.prepare(
            images=[scenes[p[0]].image for p, _ in group], text=[prompt] * len(group)
        )
        target = model.prepare(
            images=[scenes[p[1]].image for p, _ in group], text=[prompt] * len(group)
        )
        src_pos = [int(source.layout.positions(role)[b][0]) for b in range(len(group))]
        tgt_pos = [int(target.layout.positions(role)[b][0]) for b in range(len(group))]
        saved: dict[int, Tensor] = {}

        rows = torch.arange(len(group))

        def keep(i, saved=saved, rows=rows, src_pos=src_pos):
            def hook(module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                saved[i] = h[rows, src_pos].clone()

            return hook

        handles = [
            layer.register_forward_pre_hook(keep(i), with_kwargs=True)
            for i, layer in enumerate(layers)
        ]
        with torch.no_grad():
            hf(**source.inputs)
        for h in handles:
            h.remove()
        wanted = [p[2].answer for p, _ in group]
        clean = _greedy(hf, model.tokenizer, target.inputs)
        for i, layer in enumerate(layers):

            def write(module, args, kwargs, i=i, saved=saved, rows=rows, tgt_pos=tgt_pos):
                if args:
                    h = args[0].clone()
                    h[rows, tgt_pos] = saved[i]
                    return (h, *args[1:]), kwargs
                h = kwargs["hidden_states"].clone()
                h[rows, tgt_pos] = saved[i]
                return args, {**kwargs, "hidden_states": h}

            patched = _greedy(
                hf,
                model.tokenizer,
                target.inputs,
                lambda layer=layer, write=write: [
                    layer.register_forward_pre_hook(write, with_kwargs=True)
                ],
            )
            flips[i] += [c != w and p == w for c, p, w in zip(clean, patched, wanted, strict=True)]
    return [sum(f) / len(f) for f in flips]


# ------------------------------------------------------------------ against the reference
@pytest.mark.parametrize(
    "condition", ["none", "gate", "image->text", "image->text, layer 0", "image->text, layers 1+"]
)
def test_knockout_accuracy_equals_hand_masked_hf(organism, condition) -> None:
    model, hf, scenes, measured = organism
    expected = _reference_accuracy(model, hf, scenes, condition)
    assert measured.accuracy[condition] == pytest.approx(expected, abs=0)


def test_chance_is_the_majority_answer_rate(organism) -> None:
    _, _, scenes, measured = organism
    for kind in KINDS:
        answers = Counter(qa.answer for s in scenes for qa in s.qa if qa.kind == kind)
        assert measured.chance[kind] == max(answers.values()) / sum(answers.values())
        assert measured.counts[kind] == sum(answers.values())
    assert measured.chance["count"] == 1.0  # one object each: count is never above chance


@pytest.mark.parametrize("role", ["gate", "last"])
def test_flip_rate_equals_hand_patched_hf(organism, role) -> None:
    """At the gate (the criterion) and at the last prompt token (where the answer is, so the
    patch flips and the comparison is not between zeros)."""
    model, hf, scenes, measured = organism
    pairs = patch_pairs(scenes, N_PAIRS, seed=0)
    expected = _reference_flips(model, hf, scenes, pairs, role)
    if role == "gate":
        assert list(measured.flip_rate) == expected
    else:
        rates, _ = flip_rates(model, scenes, pairs, positions="last")
        assert list(rates) == expected
        assert max(expected) > 0  # the patch acts, so equality is not between zeros


def test_pairs_ask_the_same_question_with_another_answer(organism) -> None:
    _, _, scenes, measured = organism
    pairs = patch_pairs(scenes, N_PAIRS, seed=0)
    assert len(pairs) == measured.n_pairs == N_PAIRS
    for i, j, s, t in pairs:
        assert s in scenes[i].qa and t in scenes[j].qa
        assert s.question == t.question and s.answer != t.answer
    assert len({(j, t.question) for _, j, _, t in pairs}) == len(pairs)
    assert patch_pairs(scenes, N_PAIRS, seed=0) == pairs != patch_pairs(scenes, N_PAIRS, seed=1)


def test_todays_organisms_have_no_gate(organism) -> None:
    _, _, _, measured = organism
    assert measured.has_gate is False
    assert measured.criteria["knockout"].passed is False
    record = measured.to_record()
    assert record["has_gate"] is False and record["criteria"]["share"]["threshold"] == 0.2


# ------------------------------------------------------------------ criteria logic
def _synthetic(**overrides) -> GateMeasurement:
    """Two kinds; colour 1.0 (chance 0.2), count at chance 1.0."""
    values = dict(
        kinds=("colour", "count"),
        counts={"colour": 30, "count": 10},
        chance={"colour": 0.2, "count": 1.0},
        accuracy={
            "none": {"colour": 1.0, "count": 1.0},
            "gate": {"colour": 0.4, "count": 0.0},
            "image->text": {"colour": 0.8, "count": 1.0},
        },
        gate_share=(0.1, 0.25),
        flip_rate=(0.0, 0.6),
        baseline_flip_rate=0.0,
        n_pairs=10,
        pairs_reason=None,
        n_scenes=30,
        measure_seed=0,
    )
    values.update(overrides)
    return GateMeasurement(**values)


def test_criteria_pass() -> None:
    m = _synthetic()
    # count is at chance: left out, so its fall to 0 does not count
    assert m.drop("gate") == pytest.approx((1.0 - 0.4) / (1.0 - 0.2))
    assert m.drop("image->text") == pytest.approx((1.0 - 0.8) / (1.0 - 0.2))
    assert {n: c.passed for n, c in m.criteria.items()} == {
        "knockout": True,
        "share": True,
        "patching": True,
    }
    assert m.has_gate is True


def test_criteria_pool_kinds_weighted_by_questions() -> None:
    acc = {
        "none": {"a": 1.0, "b": 0.6},
        "gate": {"a": 0.5, "b": 0.6},
        "image->text": {"a": 1.0, "b": 0.6},
    }
    m = _synthetic(
        kinds=("a", "b"), counts={"a": 10, "b": 30}, chance={"a": 0.5, "b": 0.2}, accuracy=acc
    )
    assert m.drop("gate") == pytest.approx(10 * 0.5 / (10 * 0.5 + 30 * 0.4))


@pytest.mark.parametrize(
    "overrides, failing",
    [
        ({"gate_share": (0.1, 0.19)}, "share"),
        ({"flip_rate": (0.49, 0.2)}, "patching"),
        (
            {
                "accuracy": {
                    "none": {"colour": 1.0, "count": 1.0},
                    "gate": {"colour": 0.65, "count": 1.0},
                    "image->text": {"colour": 0.8, "count": 1.0},
                }
            },
            "knockout",
        ),  # drop < 0.5
        (
            {
                "accuracy": {
                    "none": {"colour": 1.0, "count": 1.0},
                    "gate": {"colour": 0.4, "count": 1.0},
                    "image->text": {"colour": 0.2, "count": 1.0},
                }
            },
            "knockout",
        ),  # < image->text
    ],
)
def test_criteria_fail(overrides, failing) -> None:
    m = _synthetic(**overrides)
    assert m.criteria[failing].passed is False
    assert all(c.passed for n, c in m.criteria.items() if n != failing)
    assert m.has_gate is False


def test_criteria_undefined_are_never_zero_nor_a_pass() -> None:
    no_pairs = _synthetic(
        flip_rate=None, baseline_flip_rate=None, n_pairs=0, pairs_reason="no pair"
    )
    c = no_pairs.criteria["patching"]
    assert (c.value, c.passed) == (None, None) and "no pair" in c.reason
    assert no_pairs.has_gate is False
    at_chance = _synthetic(
        accuracy={k: {"colour": 0.2, "count": 1.0} for k in ("none", "gate", "image->text")}
    )
    c = at_chance.criteria["knockout"]
    assert (c.value, c.passed) == (None, None) and "chance" in c.reason
    assert at_chance.drop("gate") is None and at_chance.has_gate is False
    assert at_chance.to_record()["drop"]["gate"] is None


# ------------------------------------------------------------------ the report
def test_write_factorial_writes_three_files_and_returns_a_figure(tmp_path) -> None:
    a = {
        "name": "corner",
        "seed": 0,
        "factors": {"objective": "image+text", "layers": 8},
        **_synthetic().to_record(),
    }
    b = {
        "name": "flip",
        "seed": 1,
        "objective": "text",
        "layers": 8,
        **_synthetic(gate_share=(0.0, 0.1)).to_record(),
    }
    fig = write_factorial([a, b], tmp_path)
    assert isinstance(fig, go.Figure)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gate_factorial.html",
        "gate_factorial.json",
        "gate_factorial.md",
    ]
    import json

    assert json.loads((tmp_path / "gate_factorial.json").read_text()) == [a, b]
    md = (tmp_path / "gate_factorial.md").read_text()
    assert "| corner | image+text | 8 | 0 |" in md and "| flip | text | 8 | 1 |" in md
    assert "| objective | image+text | 1 | 1.00 | 0.750 |" in md
    assert "| objective | text | 1 | 0.00 | 0.750 |" in md
    assert "| layers | 8 | 2 | 0.50 | 0.750 |" in md
