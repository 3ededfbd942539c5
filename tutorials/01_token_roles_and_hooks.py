# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 1: token roles and hooks
#
# Token roles, the gate, caching the residual stream and editing the image features, on the
# native model organism (a 4-layer Chameleon trained on vlm_lens' synthetic world, shipped with
# the package; everything runs offline). On a real checkpoint only the loading line changes:
# `HookedVLM.from_pretrained("facebook/chameleon-7b", dtype=torch.bfloat16, device="cuda")`.
#
# This file is a jupytext percent script: run it as `python tutorials/01_token_roles_and_hooks.py`
# or open it as a notebook (`jupytext --to notebook tutorials/01_token_roles_and_hooks.py`).

# %%
import plotly.express as px
import torch

from vlm_lens import HookedVLM, hooks, viz
from vlm_lens.world import world_split

renderer = viz.notebook_setup()  # figures show in JupyterLab and in the exported HTML

# %% [markdown]
# ## 1. Wrap a model, prepare images and prompts
# `<image>` marks where each image goes (`model.image_placeholder`).

# %%
model = HookedVLM.from_pretrained("organism:native")
scenes = world_split("test", 2, seed=0, max_objects=1)
batch = model.prepare(
    images=[scene.image for scene in scenes],
    text=["<image>what colour is the shape?", "<image>what shape is it?"],
)
print("placeholder:", model.image_placeholder)
print(batch.layout.summary(1))

# %% [markdown]
# ## 2. Roles as masks and positions
# A position may have several roles: Chameleon's `<eoss>` is both `gate` and `image_end`.

# %%
gate = batch.layout.positions("gate")  # one tensor per prompt
text_after_image = batch.layout.mask("text", after="image")  # [batch, pos] bool
print("gate positions:", [g.tolist() for g in gate])
print("text after the image:", text_after_image.sum(dim=1).tolist(), "tokens")
print("the last tokens of prompt 0:", model.to_str_tokens(batch, index=0)[-8:])

# %% [markdown]
# ## 3. Cache the language model's residual stream (never the vision tower)

# %%
logits, cache = model.run_with_cache(batch, names_filter=hooks.lm_filter("hook_resid_post"))
norms = []
for layer in range(model.cfg.n_layers):
    resid = cache[hooks.resid_post(layer)]  # [batch, pos, d_model]
    for b, g in enumerate(gate):
        norms.append({"layer": layer, "prompt": b, "norm": resid[b, g[0]].norm().item()})
px.line(norms, x="layer", y="norm", color="prompt", markers=True, title="|gate residual|")

# %% [markdown]
# ## 4. Edit the image features as they enter the decoder
# `hooks.IMAGE_EMBEDS` (`hook_image_embeds`, `[batch, n_image_tokens, d_model]`) is the point
# vlm_lens adds; zeroing it removes the image, and the answers move.


# %%
def zero_image(features: torch.Tensor, hook: object) -> torch.Tensor:  # noqa: ARG001
    return torch.zeros_like(features)


def answers(**kwargs: object) -> list[str]:
    """The generated text of each prompt, decoded (special tokens dropped)."""
    return model.generate(batch, max_new_tokens=3, return_type="str", **kwargs)


ablated = model.run_with_hooks(batch, fwd_hooks=[(hooks.IMAGE_EMBEDS, zero_image)])
last = batch.layout.mask("last")
change = (ablated[last] - logits[last]).abs().max().item()
print(f"max change of the last-token logits after zeroing the image: {change:.3f}")
print("answers:                 ", answers())
print("answers without an image:", answers(fwd_hooks=[(hooks.IMAGE_EMBEDS, zero_image)]))
print("the scenes:", [f"{s.objects[0].colour} {s.objects[0].shape}" for s in scenes])

# %% [markdown]
# ## 5. Look at the attention: a circuitsvis view
# The 256 image tokens are collapsed into 8 labelled groups (keys summed, queries averaged).

# %%
layer = 2
one = model.prepare(images=scenes[0].image, text="<image>what colour is the shape?")
_, pattern_cache = model.run_with_cache(one, names_filter=hooks.pattern(layer))
viz.attention_heads_view(
    pattern_cache[hooks.pattern(layer)], one.layout, model.to_str_tokens(one), layer=layer
)
