"""Tutorial 1: token roles, the gate, caching and editing image features (runs offline).

Run: ``python tutorials/01_token_roles_and_hooks.py``. Swap the tiny model for a real one with
``HookedVLM.from_pretrained("facebook/chameleon-7b")``; every line below stays the same.
"""

import torch

from vlm_lens import HookedVLM, hooks
from vlm_lens.testing import build_tiny, sample_image

# 1. Wrap a model. A tiny random Chameleon stands in for Chameleon-7B.
tiny = build_tiny("chameleon")
model = HookedVLM.from_hf(tiny.model, tiny.processor)

# 2. Prepare images and prompts: the placeholder marks where each image goes.
print("placeholder:", model.image_placeholder)
batch = model.prepare(
    images=[sample_image(0, tiny.image_size), sample_image(1, tiny.image_size)],
    text=["<image>What is in the image?", "Look: <image> Which colour?"],
)
print(batch.layout.summary(1))

# 3. Roles as masks and positions.
gate = batch.layout.positions("gate")  # one tensor per prompt
text_after_image = batch.layout.mask("text", after="image")
print("gate positions:", [g.tolist() for g in gate])
print("text after the image:", text_after_image.sum(dim=1).tolist(), "tokens")

# 4. Cache the residual stream of the language model only (never the vision tower).
logits, cache = model.run_with_cache(batch, names_filter=hooks.lm_filter("hook_resid_post"))
for layer in range(model.cfg.n_layers):
    resid = cache[hooks.resid_post(layer)]  # [batch, pos, d_model]
    gate_vectors = torch.stack([resid[b, g[0]] for b, g in enumerate(gate)])
    print(f"layer {layer}: |gate residual| = {gate_vectors.norm(dim=-1).tolist()}")


# 5. Edit the image features as they enter the decoder: zero them and see the answer move.
def zero_image(features: torch.Tensor, hook: object) -> torch.Tensor:  # noqa: ARG001
    return torch.zeros_like(features)  # [batch, n_image_tokens, d_model]


ablated = model.run_with_hooks(batch, fwd_hooks=[(hooks.IMAGE_EMBEDS, zero_image)])
last = batch.layout.mask("last")
change = (ablated[last] - logits[last]).abs().max().item()
print(f"max change of the last-token logits after zeroing the image: {change:.3f}")

# 6. Generate with the image (and any hooks) on every step.
tokens = model.generate(batch, max_new_tokens=5)
print("generated ids:", tokens[:, batch.input_ids.shape[1] :].tolist())
