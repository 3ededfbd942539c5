"""logit_lens against the model's logits and a full cache; find_sinks on an injected sink."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import Wrapped
from vlm_lens import hooks
from vlm_lens.analysis.attention_share import attention_share
from vlm_lens.analysis.logit_lens import logit_lens
from vlm_lens.analysis.sinks import find_sinks
from vlm_lens.positions import image_token

# ---------------------------------------------------------------------- logit lens


def test_last_layer_equals_model_output(wrapped: Wrapped) -> None:
    """At the last layer and the last position the lens is the model's own next-token
    distribution (up to float32 rounding: the head runs on the gathered rows)."""
    model = wrapped.model
    batch = wrapped.batch(2, padding_side="left")
    lens = logit_lens(model, batch, positions="last", layers=[-1], top_k=7, tokens=[3, 200])
    with torch.no_grad():
        logits = model(batch)
    last = batch.layout.positions("last")
    rows = torch.stack([logits[b, p[0]] for b, p in enumerate(last)])
    probs = torch.softmax(rows, dim=-1)
    top = probs.topk(7, dim=-1)
    assert lens.sequence.tolist() == [0, 1]
    assert lens.position.tolist() == [int(p[0]) for p in last]
    assert np.array_equal(lens.top_ids[0], top.indices.numpy())
    np.testing.assert_allclose(lens.top_probs[0], top.values.numpy(), rtol=1e-5, atol=1e-7)
    expected_logprobs = torch.log_softmax(rows, dim=-1)[:, [3, 200]].numpy()
    np.testing.assert_allclose(lens.token_logprobs[0], expected_logprobs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["gate", "image"])
def test_every_layer_equals_full_cache(wrapped: Wrapped, positions: str) -> None:
    model = wrapped.model
    batch = wrapped.batch(2, padding_side="right")
    lens = logit_lens(model, batch, positions=positions, top_k=4, tokens=[5, 9])
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=hooks.lm_filter("hook_resid_post"))
    seq, pos = batch.layout.mask(positions).nonzero(as_tuple=True)
    assert lens.sequence.tolist() == seq.tolist() and lens.position.tolist() == pos.tolist()
    assert set(lens.role) == {positions}
    for i, layer in enumerate(range(model.cfg.n_layers)):
        with torch.no_grad():
            logits = model.resid_to_logits(cache[hooks.resid_post(layer)])[seq, pos]
        probs = torch.softmax(logits, dim=-1)
        top = probs.topk(4, dim=-1)
        assert np.array_equal(lens.top_ids[i], top.indices.numpy())
        np.testing.assert_allclose(lens.top_probs[i], top.values.numpy(), rtol=1e-5, atol=1e-7)
        logprobs = torch.log_softmax(logits, dim=-1)
        np.testing.assert_allclose(
            lens.token_logprobs[i], logprobs[:, [5, 9]].numpy(), rtol=1e-5, atol=1e-5
        )
        entropy = -(probs * logprobs).nan_to_num().sum(-1)
        np.testing.assert_allclose(lens.entropy[i], entropy.numpy(), rtol=1e-4, atol=1e-5)


def test_frames_and_summary(wrapped: Wrapped) -> None:
    model = wrapped.model
    batch = wrapped.batch(1)
    lens = logit_lens(model, batch, positions="image", top_k=3, tokens=[7])
    n_layers, n_rows = model.cfg.n_layers, int(batch.layout.mask("image").sum())
    assert lens.top_ids.shape == (n_layers, n_rows, 3)
    assert lens.top_tokens is not None and lens.top_tokens.shape == (n_layers, n_rows, 3)
    assert lens.top_tokens[0, 0, 0] == model.tokenizer.decode([int(lens.top_ids[0, 0, 0])])
    frame = lens.to_frame()
    assert list(frame.columns) == [
        *("sequence", "position", "role", "layer", "rank", "token_id", "token", "prob"),
    ]
    assert len(frame) == n_layers * n_rows * 3
    first = frame[(frame.layer == 0) & (frame.position == lens.position[0]) & (frame["rank"] == 0)]
    assert first.token_id.item() == lens.top_ids[0, 0, 0]
    tokens = lens.token_frame()
    assert len(tokens) == n_layers * n_rows and (tokens.token_id == 7).all()
    top1 = set(lens.top_ids[-1, :, 0].tolist())
    summary = lens.summary(token_set=top1)
    assert summary.layer.tolist() == list(range(n_layers))
    assert (summary.n_positions == n_rows).all()
    assert summary.top1_in_set.iloc[-1] == 1.0
    np.testing.assert_allclose(summary.mean_max_prob, lens.max_prob.mean(1))


def test_logit_lens_errors(wrapped: Wrapped) -> None:
    batch = wrapped.batch(1)
    with pytest.raises(ValueError, match="selects no position"):
        logit_lens(wrapped.model, batch, positions=image_token(999))
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(wrapped.model, batch, top_k=0)
    with pytest.raises(ValueError, match="tokens"):
        logit_lens(wrapped.model, batch, tokens=[10**9])
    with pytest.raises(ValueError, match="tokens were tracked"):
        logit_lens(wrapped.model, batch).token_frame()


# ---------------------------------------------------------------------- sinks


def _brute_force_ratios(w: Wrapped, batch, layer: int) -> dict[tuple[int, int], tuple[float, int]]:
    with torch.no_grad():
        _, cache = w.model.run_with_cache(batch, names_filter=hooks.resid_post(layer))
    resid = cache[hooks.resid_post(layer)].double().abs()
    out = {}
    for b in range(len(batch)):
        real = [p for p in range(resid.shape[1]) if "pad" not in batch.layout.roles_at(b, p)]
        mean = resid[b, real].mean()
        for p in real:
            roles = batch.layout.roles_at(b, p)
            if int(batch.layout.image_index[b, p]) >= 0 and "image_start" not in roles:
                out[(b, p)] = (float(resid[b, p].max() / mean), int(resid[b, p].argmax()))
    return out


def test_sink_ratios_match_brute_force(wrapped: Wrapped) -> None:
    batch = wrapped.batch(2, padding_side="left")
    result = find_sinks(wrapped.model, batch)
    frame = result.to_frame()
    assert list(frame.columns) == [
        *("sequence", "position", "role", "layer", "ratio", "dim", "attention", "is_sink"),
    ]
    assert not frame.is_sink.any(), "a random tiny model has no massive activations"
    assert result.sink_dims() == {layer: [] for layer in result.layers}
    for layer in range(wrapped.model.cfg.n_layers):
        expected = _brute_force_ratios(wrapped, batch, layer)
        rows = frame[frame.layer == layer]
        columns = ("sequence", "position", "ratio", "dim")
        assert sorted(zip(rows.sequence, rows.position, strict=True)) == sorted(expected)
        for seq, pos, ratio, dim in zip(*(rows[c] for c in columns), strict=True):
            assert ratio == pytest.approx(expected[(seq, pos)][0], rel=1e-9)
            assert dim == expected[(seq, pos)][1]
    # the attention column is the per-prompt share of attention_share
    shares = attention_share(wrapped.model, batch)
    gate = frame[frame.role == "gate"].sort_values(["sequence", "layer"])
    expected_gate = shares.per_prompt[:, :, shares.groups.index("gate")].reshape(-1)
    np.testing.assert_allclose(gate.attention.to_numpy(), expected_gate, atol=1e-12)


def test_injected_massive_activation_is_flagged(wrapped: Wrapped) -> None:
    model = wrapped.model
    batch = wrapped.batch(2, padding_side="left")
    seq = 1
    pos = int(batch.layout.positions("image")[seq][3])
    with torch.no_grad():
        _, cache = model.run_with_cache(batch, names_filter=hooks.resid_post(0))
    dim = int(cache[hooks.resid_post(0)][seq, pos].abs().argmax())

    def scale(resid: torch.Tensor, hook: object) -> torch.Tensor:
        resid = resid.clone()
        resid[seq, pos, dim] *= 1000
        return resid

    with model.hooks(fwd_hooks=[(hooks.resid_post(0), scale)]):
        result = find_sinks(model, [batch], layers=[0])
        later = find_sinks(model, batch)
    sinks = result.sinks()
    assert sinks[["sequence", "position", "layer", "dim"]].values.tolist() == [[seq, pos, 0, dim]]
    assert sinks.role.tolist() == ["image"]
    assert result.dims[int(np.flatnonzero(result.is_sink)[0])] == (dim,)
    assert result.sink_dims() == {0: [dim]}
    # the massive value rides the residual stream: later flags are at the same position only
    flagged = later.sinks()
    assert set(zip(flagged.sequence, flagged.position, strict=True)) == {(seq, pos)}
    assert not find_sinks(model, batch, layers=[0]).is_sink.any()
