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
# # Tutorial 3: knockout and patching on your own images
#
# Point vlm_lens at a folder of your images, one subfolder per label (`photos/cat/*.jpg`,
# `photos/dog/*.jpg`), and ask: which positions carry the image to the answer (knockout), and
# where does the answer's class live (patching)? This notebook writes such a folder first, with
# pictures drawn by PIL, so that it runs anywhere; replace `folder` with yours. The model is the
# non-native organism (a tiny LLaVA shipped with vlm_lens), standing in for
# `HookedVLM.from_pretrained("llava-hf/llava-1.5-7b-hf")`.

# %%
import tempfile
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from vlm_lens import HookedVLM, hooks, viz
from vlm_lens.analysis import PatchPair, attention_share, knockout_effect, patching_sweep
from vlm_lens.experiments import folder_images
from vlm_lens.interventions import gate_knockout, image_to_text_knockout, knockout

renderer = viz.notebook_setup()  # figures show in JupyterLab and in exported HTML

# %% [markdown]
# ## Your images
# Here: red and blue discs on grey, 4 each, saved as PNG files in `folder/<label>/`.

# %%
folder = Path(tempfile.mkdtemp()) / "photos"
for label in ("red", "blue"):
    (folder / label).mkdir(parents=True)
    for i in range(4):
        picture = Image.new("RGB", (32, 32), (100 + 20 * i,) * 3)
        x, y = 4 + 4 * i, 20 - 4 * i
        ImageDraw.Draw(picture).ellipse((x, y, x + 10, y + 10), fill=label)
        picture.save(folder / label / f"{i}.png")

photos = folder_images(folder)  # or Image.open(...) each file yourself
print(len(photos), "images, labels", sorted(set(photos.labels)))
model = HookedVLM.from_pretrained("organism:nonnative")
prompt = "<image>what colour is the shape?"
batch = model.prepare(images=list(photos.images), text=[prompt] * len(photos))
print(batch.layout.summary(0))

# %% [markdown]
# ## What does the model say?
# Decoded text, not ids: `return_type="str"` gives the new text of each prompt.

# %%
answers = model.generate(batch, max_new_tokens=3, return_type="str")
pd.DataFrame({"file": photos.names, "label": photos.labels, "answer": answers})

# %% [markdown]
# ## Knockout
# A knockout is a `fwd_hooks` list; it works in `run_with_hooks` and `generate`. Here the paper's
# conditions plus one of our own (no text token reads the first half of the image tokens),
# scored against the labels' first tokens.

# %%
targets = [model.tokenizer.convert_tokens_to_ids(label) for label in photos.labels]


def first_half(b):
    """Block text→image for the first half of each image span (a user condition)."""
    image = b.layout.mask("image")
    first = image & (image.cumsum(dim=1) <= image.sum(dim=1, keepdim=True) // 2)
    return knockout(b, queries="text", keys=first)


conditions = {
    "gate": gate_knockout,
    "image->text": image_to_text_knockout,
    "first half of the image": first_half,
}
effect = knockout_effect(model, batch, conditions, targets=targets)
viz.knockout_figure(effect)

# %%
with_knockout = {
    name: model.generate(batch, max_new_tokens=3, return_type="str", fwd_hooks=build(batch))
    for name, build in conditions.items()
}
pd.DataFrame({"label": photos.labels, "baseline": answers, **with_knockout})

# %% [markdown]
# ## Patching
# Each red image's residual at the gate is patched into a blue image's run, layer by layer;
# a flip means the blue image is now called red.

# %%
red = [im for im, label in zip(photos.images, photos.labels, strict=True) if label == "red"]
blue = [im for im, label in zip(photos.images, photos.labels, strict=True) if label == "blue"]
source = model.prepare(images=red, text=[prompt] * len(red))
target = model.prepare(images=blue, text=[prompt] * len(blue))
red_id, blue_id = model.tokenizer.convert_tokens_to_ids(["red", "blue"])
sweep = patching_sweep(model, PatchPair(source, target, red_id, blue_id), site="residual")
viz.patching_figure(sweep)

# %% [markdown]
# ## Where the text looks, over the image, and per head

# %%
one = model.prepare(images=red[0], text=prompt)
viz.image_attention_figure(attention_share(model, one), layer=1, image=red[0])

# %%
_, cache = model.run_with_cache(one, names_filter=hooks.pattern(1))
viz.attention_heads_view(cache[hooks.pattern(1)], one.layout, model.to_str_tokens(one), layer=1)
