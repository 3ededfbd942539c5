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
# # Tutorial 2: the narrow-gate pipeline
#
# The Narrow Gate paper's measurements, each in a few lines, with its figure. The native model
# organism (a tiny Chameleon trained from scratch on the synthetic world, shipped with vlm_lens)
# stands in for Chameleon-7B, and held-out world scenes for a dataset; with
# `HookedVLM.from_pretrained("facebook/chameleon-7b")` and real images every line stays the same.
#
# 1. attention share by role (the paper's f^l_j);
# 2. neighbourhood overlap χ of the gate and of the mean image token with class labels;
# 3. the modality gap (|cos| between text and image residuals, cluster homogeneity);
# 4. attention knockout (gate, image→text, random image tokens) on the next token and on
#    generated text;
# 5. activation patching at the gate, layer by layer;
# 6. the same collection over a dataset, streamed to disk and resumable.

# %%
import tempfile

import pandas as pd
import torch

from vlm_lens import HookedVLM, hooks, viz
from vlm_lens.analysis import (
    PatchPair,
    attention_share,
    knockout_effect,
    modality_gap,
    neighbourhood_overlap,
    patching_sweep,
    representations,
)
from vlm_lens.data import Probe, make_examples, prepare_batches, run_dataset
from vlm_lens.interventions import (
    gate_knockout,
    image_to_text_knockout,
    knockout,
    last_layers,
    random_image_knockout,
)
from vlm_lens.metrics import softmax_intersection
from vlm_lens.positions import after, image_token
from vlm_lens.world import world_split
from vlm_lens.zoo.tasks import question_prompt

renderer = viz.notebook_setup()  # figures show in JupyterLab and in exported HTML
pd.set_option("display.width", 120)
pd.set_option("display.max_columns", 10)
model = HookedVLM.from_pretrained("organism:native")
n_layers = model.cfg.n_layers

# %% [markdown]
# A small dataset: 24 held-out scenes, labelled by the object's colour, each asked its colour.
# Batches of 8 (`batch_size="auto"` sizes them from free memory); a list, as it is used 5 times.

# %%
scenes = world_split("test", 24, seed=0, max_objects=1)
images = [scene.image for scene in scenes]
labels = [scene.objects[0].colour for scene in scenes]
prompts = [question_prompt("what colour is the shape?", model.image_placeholder)] * len(scenes)
batches = list(prepare_batches(model, images, prompts, batch_size=8))

# %% [markdown]
# ## 1. Attention share
# How the text's attention to the image splits over the gate, named positions (here the 3rd
# image token, a possible sink) and the other image tokens.

# %%
share = attention_share(model, batches, groups={"third_token": image_token(2)})
print(share.to_frame().pivot(index="layer", columns="group", values="share").round(3))
viz.attention_share_figure(share)

# %% [markdown]
# The same, for one prompt, over the image: where does the text look?

# %%
single = model.prepare(images=images[0], text=prompts[0])
one = attention_share(model, single)
viz.image_attention_figure(one, layer=n_layers // 2, image=images[0])

# %% [markdown]
# And per head, in circuitsvis (the 256 image tokens collapsed into 8 labelled groups):

# %%
_, pattern_cache = model.run_with_cache(single, names_filter=hooks.pattern(n_layers // 2))
viz.attention_heads_view(
    pattern_cache[hooks.pattern(n_layers // 2)],
    single.layout,
    model.to_str_tokens(single),
    layer=n_layers // 2,
)

# %% [markdown]
# ## 2. χ: do the gate's residuals cluster by class? (chance level included)

# %%
gate = representations(model, batches, positions="gate")  # [layers, prompts, d_model]
image_mean = representations(model, batches, positions="image", reduce="mean")
chi = neighbourhood_overlap({"gate": gate, "image_mean": image_mean}, labels, k=3)
viz.overlap_figure(chi)

# %% [markdown]
# ## 3. Modality gap
# One random text token after the image vs one random image token per prompt.

# %%
text_side = representations(model, batches, positions=after("text", "gate"), reduce="random")
image_side = representations(model, batches, positions="image", reduce="random")
gap = modality_gap(text_side, image_side, min_cluster_size=3, min_samples=3)
viz.modality_gap_figure(gap)

# %% [markdown]
# ## 4. Knockout
# Each condition is a plain `fwd_hooks` list; `knockout_effect` runs the paper's three and
# scores them against the baseline (top-1 agreement, similarity, accuracy given targets).

# %%
batch = batches[0]
last = batch.layout.mask("last")
with torch.no_grad():
    clean = model(batch)[last]
    conditions = {
        "gate": gate_knockout(batch),
        "image->text": image_to_text_knockout(batch),
        "random": random_image_knockout(batch, k=10, seed=0),
        "gate, last layer only": gate_knockout(batch, layers=last_layers(n_layers, 1)),
        "text->image, post-softmax": knockout(
            batch, queries=after("text", "gate"), keys="image", mode="zero"
        ),
    }
    for name, fwd_hooks in conditions.items():
        logits = model.run_with_hooks(batch, fwd_hooks=fwd_hooks)[last]
        similarity = softmax_intersection(logits, clean).mean().item()
        print(f"knockout {name:28s} similarity to clean {similarity:.3f}")
colour_ids = model.tokenizer.convert_tokens_to_ids(labels)
viz.knockout_figure(knockout_effect(model, batches, targets=colour_ids))

# %%
said = model.generate(batch, max_new_tokens=3, return_type="str")
knocked = model.generate(
    batch, max_new_tokens=3, return_type="str", fwd_hooks=image_to_text_knockout(batch)
)
pd.DataFrame({"colour": labels[:8], "answer": said, "image->text knocked out": knocked})

# %% [markdown]
# ## 5. Patching at the gate
# The gate of one scene into a scene of another colour, layer by layer; a flip means the model
# now names the source's colour.

# %%
a, b = next((i, j) for i in range(24) for j in range(24) if labels[i] != labels[j])
source = model.prepare(images=images[a], text=prompts[a])
target = model.prepare(images=images[b], text=prompts[b])
pair = PatchPair(source, target, colour_ids[a], colour_ids[b])
sweeps = {site: patching_sweep(model, pair, site=site) for site in ("residual", "attention")}
viz.patching_figure(sweeps)

# %% [markdown]
# ## 6. A dataset run
# The gate and the mean image token at every layer, streamed to disk in chunks; rerunning the
# same call after an interruption resumes where it stopped.

# %%
examples = make_examples(images, prompts, labels=labels)
probes = [Probe("gate"), Probe("image_mean", positions="image", reduce="mean")]
with tempfile.TemporaryDirectory() as folder:
    store = run_dataset(model, examples, probes, folder, batch_size=8)
    gate_from_disk = store.load("gate").transpose(0, 1)  # [layers, examples, d_model]
    chi_from_disk = neighbourhood_overlap({"gate": gate_from_disk}, store.labels, k=3)
    # the store's batches are left-padded, the ones above right-padded: equal up to rounding
    torch.testing.assert_close(gate_from_disk, gate, rtol=0, atol=1e-5)
chi_from_disk.to_frame().round(3)
