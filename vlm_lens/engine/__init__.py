"""How a forward pass runs: the machinery under `HookedVLM`.

* `attention` / `norm`: each decoder layer runs Hugging Face's fused attention (and norm)
  unless a hook needs TransformerLens' exact eager reconstruction.
* `image_features`: the ``hook_image_embeds`` point.
* `score_mask`, `query_block`: how knockout, patching and steering hooks talk to the engine
  (mask-only score hooks; where the running query block starts).
* `intervention`: `Intervention`, a ``fwd_hooks`` list that knows its earliest position.
* `prefix`, `suffix_stack`, `sweep`: a clean prefix's KV cache, many conditions per suffix
  pass, `run_sweep`.
* `placement`: where a model dispatched over a ``device_map`` runs (inputs, each layer).
* `memory`: batch sizes from free memory. `attention_rows`: attention rows without the
  pattern.
* `compat`: every private name of TransformerLens, transformers and torch the engine uses.

The engine imports only the vocabulary below it (layout, batch, positions, hooks, errors,
types) and the adapters; the facade (`vlm_lens.model`) and everything above import it.
"""
