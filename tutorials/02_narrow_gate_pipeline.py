"""Tutorial 2: the Narrow Gate paper's measurements, each in a few lines (runs offline).

Run: ``python tutorials/02_narrow_gate_pipeline.py``. The native model organism (a tiny
Chameleon trained from scratch on the synthetic world, shipped with vlm_lens) stands in for
Chameleon-7B, and held-out world scenes for a dataset; with
``HookedVLM.from_pretrained("facebook/chameleon-7b")`` and real images every line stays the same.

1. attention share by role (the paper's f^l_j);
2. neighbourhood overlap χ of the gate and of the mean image token with class labels;
3. the modality gap (|cos| between text and image residuals, cluster homogeneity);
4. attention knockout (gate, image→text, random image tokens) on the next-token prediction and
   on generated text;
5. activation patching at the gate, layer by layer;
6. the same collection over a dataset, streamed to disk and resumable.
"""

import tempfile

import pandas as pd
import torch

from vlm_lens import HookedVLM
from vlm_lens.analysis import (
    PatchPair,
    attention_share,
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

pd.set_option("display.width", 120)
pd.set_option("display.max_columns", 10)
model = HookedVLM.from_pretrained("organism:native")
n_layers = model.cfg.n_layers

# A small dataset: 24 held-out scenes, labelled by the object's colour, each asked its colour.
scenes = world_split("test", 24, seed=0, max_objects=1)
images = [scene.image for scene in scenes]
labels = [scene.objects[0].colour for scene in scenes]
prompts = [question_prompt("what colour is the shape?", model.image_placeholder)] * len(scenes)
# Batches of 8 (batch_size="auto" sizes them from free memory); a list, as it is used 5 times.
batches = list(prepare_batches(model, images, prompts, batch_size=8))

# 1. Attention share: how the text's attention to the image splits over the gate, named
#    positions (here the 3rd image token, a possible sink) and the other image tokens.
share = attention_share(model, batches, groups={"third_token": image_token(2)})
print(share.to_frame().pivot(index="layer", columns="group", values="share").round(3))

# 2. χ: do the gate's residuals cluster by class? (chance level included)
gate = representations(model, batches, positions="gate")  # [layers, prompts, d_model]
image_mean = representations(model, batches, positions="image", reduce="mean")
chi = neighbourhood_overlap({"gate": gate, "image_mean": image_mean}, labels, k=3)
print(chi.to_frame().round(3))

# 3. Modality gap: one random text token after the image vs one random image token per prompt.
text_side = representations(model, batches, positions=after("text", "gate"), reduce="random")
image_side = representations(model, batches, positions="image", reduce="random")
print(modality_gap(text_side, image_side, min_cluster_size=3, min_samples=3).to_frame().round(3))

# 4. Knockout: each condition is a plain fwd_hooks list.
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
    for name, hooks in conditions.items():
        logits = model.run_with_hooks(batch, fwd_hooks=hooks)[last]
        similarity = softmax_intersection(logits, clean).mean().item()
        print(f"knockout {name:28s} similarity to clean {similarity:.3f}")
tokens = model.generate(batch, max_new_tokens=5, fwd_hooks=gate_knockout(batch))
print("generated with the gate knocked out:", tokens[:, batch.input_ids.shape[1] :].tolist())

# 5. Patching at the gate: the gate of one scene into a scene of another colour, layer by layer;
#    a flip means the model now names the source's colour.
a, b = next((i, j) for i in range(24) for j in range(24) if labels[i] != labels[j])
source = model.prepare(images=images[a], text=prompts[a])
target = model.prepare(images=images[b], text=prompts[b])
colour_id = model.tokenizer.convert_tokens_to_ids
pair = PatchPair(source, target, colour_id(labels[a]), colour_id(labels[b]))
print(patching_sweep(model, pair, site="residual").to_frame().round(3))
print(patching_sweep(model, pair, site="attention").to_frame().round(3))

# 6. A dataset run: the gate and the mean image token at every layer, streamed to disk in chunks;
#    rerunning the same call after an interruption resumes where it stopped.
examples = make_examples(images, prompts, labels=labels)
probes = [Probe("gate"), Probe("image_mean", positions="image", reduce="mean")]
with tempfile.TemporaryDirectory() as folder:
    store = run_dataset(model, examples, probes, folder, batch_size=8, progress=False)
    gate_from_disk = store.load("gate").transpose(0, 1)  # [layers, examples, d_model]
    chi_from_disk = neighbourhood_overlap({"gate": gate_from_disk}, store.labels, k=3)
    # the store's batches are left-padded, the ones above right-padded: equal up to rounding
    torch.testing.assert_close(gate_from_disk, gate, rtol=0, atol=1e-5)
    print(chi_from_disk.to_frame().round(3))
