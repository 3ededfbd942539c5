"""Train the *native* model organism: a tiny Chameleon trained from scratch on the world.

Re-create the shipped weights (seeded; CPU, one thread; the time is in ``training.json``)::

    python -m vlm_lens.zoo.native --out vlm_lens/zoo/weights/native --seed 0

The organism is a real ``ChameleonForConditionalGeneration`` checkpoint folder (Chameleon VQ
image tokenizer, Chameleon decoder with q/k LayerNorm, `ChameleonProcessor` in chat mode with a
word-level tokenizer whose image codes are Chameleon's ``IMGIMG...Z`` tokens), so it loads like
any Chameleon checkpoint: ``HookedVLM.from_pretrained("organism:native")``. It is trained the way
the early-fusion family is:

1. **VQ image tokenizer, on images alone.** The Hugging Face ``ChameleonVQVAE`` encoder and
   quantizer turn a 32x32 image into a 16x16 grid of codes (256 image tokens, codebook
   `CODEBOOK`).
   They are trained with a training-only convolutional pixel decoder (thrown away afterwards) on
   the standard VQ-VAE loss: pixel reconstruction + codebook + 0.25 commitment, straight-through
   gradients; unused codes are restarted from encoder outputs. A training-only linear head on
   the quantised vectors of the codes that cover the object predicts the object's shape
   (weight `Settings.vq_shape_weight`), so that a code names the fragment of a shape it shows,
   as a real tokenizer's codes do after training on millions of images (the pixel loss alone,
   on this little data, keeps colour and position but blurs a 10-pixel shape's outline).
2. **Decoder, from scratch, in both directions.** With the tokenizer frozen, the decoder learns
   image -> text, ``"<image>{question}"`` -> answer (every question of
   `vlm_lens.world.all_qa`) and ``"<image>describe the image."`` -> caption, and
   text -> image, ``"draw {caption}"`` -> ``<racm3:break>`` + the image's 256 code tokens +
   ``<eoss>``. The loss is on the target part only (and ``</s>``), from ``lm_head`` on the
   decoder states (Hugging Face's forward masks the image-code logits). Token layouts are those
   of the `ChameleonProcessor` (the path `HookedVLM.prepare` takes)::

       image -> text: <s> <racm3:break> code x 256 <eoss> question <reserved08706> | answer </s>
       text -> image: <s> draw caption <reserved08706> | <racm3:break> code x 256 <eoss> </s>

   To save compute, one training row holds an image prefix (``<s>`` to ``<eoss>``) once and every
   question and the caption prompt of that scene after it, each one attending to the prefix and
   to itself only, with the position ids it would have alone: the same computation as one row
   per question.

Training and evaluation use the task's scenes at 32x32 (local: single-object). The command writes
the Hugging Face folder (``model.safetensors``, config, processor and tokenizer files) and
``training.json``: settings, seed, steps, CPU seconds per phase, parameter count, file sizes, VQ
reconstruction error and codebook use, held-out losses, and the held-out accuracy per question
kind on the test split (`vlm_lens.zoo.tasks.answer_accuracy` of the saved folder, loaded back
with `HookedVLM.from_pretrained`).

**The factors of issue 15** are options (`Settings`): ``--objective`` (``weighted``, the
shipped recipe above; ``text``; ``image+text``, every image code weighted like a text token),
``--init`` (``scratch``; ``text``: a text-only language model first), ``--tokenizer``
(``semantic``, above; ``pixel``: no shape head, fresh code embeddings), ``--task`` (``local``;
``relational``: 2-4 objects, `vlm_lens.world.task_split`) and ``--layers``. Runs checkpoint to
``--out``'s ``checkpoint/`` folder and the same command resumes them
(`vlm_lens.zoo.native.checkpointing`).

Modules: `~vlm_lens.zoo.native.settings` (constants, `Settings`), `~vlm_lens.zoo.native.build`
(tokenizer, processor, model, data), `~vlm_lens.zoo.native.vq` (phase 1),
`~vlm_lens.zoo.native.rows` (token layouts), `~vlm_lens.zoo.native.decoder` (phase 2 and the
text phase), `~vlm_lens.zoo.native.checkpointing`, `~vlm_lens.zoo.native.command` (`run`,
`main`). Nothing trains at import.

Example:
    >>> Settings(objective="image+text", tokenizer="pixel").shape_weight
    0.0
"""

from vlm_lens.zoo.native.build import (
    build_config,
    build_model,
    build_processor,
    build_tokenizer,
    pixel_values,
    task_scenes,
    train_pool,
)
from vlm_lens.zoo.native.checkpointing import Checkpointer, RecipeMismatch, StopTraining
from vlm_lens.zoo.native.command import PROG, held_out_scenes, main, run
from vlm_lens.zoo.native.decoder import answer_match, held_out_losses, train_decoder, train_text
from vlm_lens.zoo.native.rows import Encoder, collate, row_losses
from vlm_lens.zoo.native.settings import (
    CODEBOOK,
    GRID,
    IMAGE_SIZE,
    SPECIALS,
    VQ_LEVELS,
    Settings,
    code_token,
)
from vlm_lens.zoo.native.vq import PixelDecoder, image_codes, init_code_embeddings, train_vq

__all__ = [
    "CODEBOOK",
    "GRID",
    "IMAGE_SIZE",
    "PROG",
    "SPECIALS",
    "VQ_LEVELS",
    "Checkpointer",
    "Encoder",
    "PixelDecoder",
    "RecipeMismatch",
    "Settings",
    "StopTraining",
    "answer_match",
    "build_config",
    "build_model",
    "build_processor",
    "build_tokenizer",
    "code_token",
    "collate",
    "held_out_losses",
    "held_out_scenes",
    "image_codes",
    "init_code_embeddings",
    "main",
    "pixel_values",
    "row_losses",
    "run",
    "task_scenes",
    "train_decoder",
    "train_pool",
    "train_text",
    "train_vq",
]
