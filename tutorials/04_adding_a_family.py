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
# # Tutorial 4: adding a model family
#
# A worked example of CONTRIBUTING.md's "Adding a model family", in a notebook. The new
# architecture is `ToyVLMForConditionalGeneration`: a class vlm_lens has never seen (here the
# LLaVA forward under a new name, built from the tiny LLaVA of `vlm_lens.testing`, so that it
# runs offline). vlm_lens refuses it until a `VLMAdapter` says where its image tokens are; then
# every analysis works on it. The checks below are, by hand, what the family contract
# (`tests/contract/`) runs on every registered family.

# %%
import copy

import torch
from transformer_lens.model_bridge.supported_architectures.llava import LlavaArchitectureAdapter
from transformers import LlavaForConditionalGeneration

from vlm_lens import HookedVLM, hooks, viz
from vlm_lens.adapters import VLMAdapter, register_family, supported_families
from vlm_lens.errors import UnsupportedModelError
from vlm_lens.layout import TokenSpec
from vlm_lens.testing import build_tiny, sample_image

renderer = viz.notebook_setup()  # figures show in JupyterLab and in exported HTML


class ToyVLMForConditionalGeneration(LlavaForConditionalGeneration):
    """The "new" architecture: its own class name, LLaVA's forward."""


tiny = build_tiny("llava")  # a tokenizer, a processor and random weights, all in memory
hf_model = ToyVLMForConditionalGeneration(tiny.model.config).eval()
hf_model.load_state_dict(tiny.model.state_dict())
hf_model.config.architectures = ["ToyVLMForConditionalGeneration"]
processor = tiny.processor
image = sample_image(0, tiny.image_size)

# %% [markdown]
# ## Before: refused, with the fix

# %%
try:
    HookedVLM.from_hf(hf_model, processor)
except UnsupportedModelError as error:
    print(str(error)[:120], "...", str(error)[-110:])

# %% [markdown]
# ## Step 0: read what the processor writes
# One `<image>` placeholder per patch (16), no token opens or closes the image: the gate is the
# first text token after the span, and adjacent images are split by the fixed length.

# %%
inputs = processor(images=image, text="<image>Hello", return_tensors="pt")
print(processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]))

# %% [markdown]
# ## Steps 1-2: the adapter (`TokenSpec`) and its TransformerLens adapter
# The ids come from the config, so `model.layout(input_ids)` works without a processor.
# TransformerLens bridges LLaVA, so its `LlavaArchitectureAdapter` is registered under the new
# class name. In the library this class is one file, `vlm_lens/adapters/toyvlm.py`.


# %%
@register_family
class ToyVLMAdapter(VLMAdapter):
    family = "toyvlm"
    architectures = ("ToyVLMForConditionalGeneration",)
    tl_architecture_adapter = LlavaArchitectureAdapter

    def build_token_spec(self, model):
        config = model.config
        placeholder = int(config.image_token_id)
        vision = config.vision_config
        return TokenSpec(
            image_token_ids=frozenset({placeholder}),
            bos_token_ids=frozenset({int(config.text_config.bos_token_id)}),
            tokens_per_image=(vision.image_size // vision.patch_size) ** 2,
            placeholder_token_id=placeholder,
        )


assert "toyvlm" in supported_families()

# %% [markdown]
# ## After: the family works
# `from_hf` rewires the model it wraps, so keep a deep copy of the plain HF model to compare to.

# %%
reference = copy.deepcopy(hf_model)
model = HookedVLM.from_hf(hf_model, processor)
batch = model.prepare(
    images=[image, sample_image(1, tiny.image_size)], text=["<image>Hello", "<image> Hi there"]
)
print(batch.layout.summary(1))

# %% [markdown]
# ## The contract's checks, by hand
# **Parity**: logits `torch.equal` to the HF model, padded batch included.
# **Roles**: the layout equals what the processor wrote (placeholders = image, the next = gate).
# **Image embeddings**: `hook_image_embeds` is the decoder input at the placeholders.
# **Generation**: greedy tokens equal HF `generate`.

# %%
with torch.no_grad():
    hf_logits = reference(**batch.inputs).logits
assert torch.equal(model(batch), hf_logits), "parity"  # each assert is one contract check

ids = batch.input_ids
placeholder = model.adapter.token_spec.placeholder_token_id
assert torch.equal(batch.layout.mask("image"), ids == placeholder), "roles"
after = torch.roll(ids == placeholder, 1, dims=1) & (ids != placeholder)
assert torch.equal(batch.layout.mask("gate"), after), "gate"

_, cache = model.run_with_cache(batch, names_filter=[hooks.IMAGE_EMBEDS, hooks.resid_pre(0)])
decoder_input = cache[hooks.resid_pre(0)][batch.layout.mask("image")]
assert torch.equal(cache[hooks.IMAGE_EMBEDS].flatten(0, 1), decoder_input), "image embeds"

tokens = model.generate(batch, max_new_tokens=4)
hf_tokens = reference.generate(**batch.inputs, max_new_tokens=4, do_sample=False)
assert torch.equal(tokens, hf_tokens), "generation"
decoded = model.generate(batch, max_new_tokens=4, return_type="str")
print("all five checks hold; decoded (random weights, so gibberish):", decoded)

# %% [markdown]
# Every analysis now runs on it, e.g. the attention view (random weights: no pattern to read).

# %%
one = model.prepare(images=image, text="<image>Hello")
_, patterns = model.run_with_cache(one, names_filter=hooks.pattern(0))
viz.attention_heads_view(patterns[hooks.pattern(0)], one.layout, model.to_str_tokens(one), layer=0)

# %% [markdown]
# ## Steps 3-7 in the library
# - Image features, validation, position ids and attention structure keep their defaults here
#   (CONTRIBUTING.md's table of seams says when to override each).
# - Register a tiny builder in `vlm_lens/testing/registry.py`, with the frame the processor
#   writes around each image (none here: LLaVA's gate is the first prompt token):
#
#   ```python
#   register_tiny("toyvlm", tiny_toyvlm, family="toyvlm", frame=ImageFrame())
#   ```
#
# - Run the family contract, `python -m pytest tests/contract -k toyvlm`, and add a row to the
#   README's family table.
