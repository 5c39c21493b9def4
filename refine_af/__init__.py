"""refine_af: instruction-tune a small open LLM with self-generated data and RL from automated
feedback (REFINE-AF, arXiv 2505.06548), and score it on SuperNI."""

import os

__version__ = "0.1.0"

# transformers (5.x) swaps layers of a model on CUDA for compiled kernels it downloads from the
# Hub's kernels-community repositories the first time the model enters train or eval mode. That
# is code from outside, fetched mid-run without being asked for (and on a machine without the
# Hub, stage 2 stops at its first step: "... is not available in the local cache"). Off unless
# the user sets USE_HUB_KERNELS themselves; transformers reads it at every from_pretrained.
os.environ.setdefault("USE_HUB_KERNELS", "0")
