"""refine_af: instruction-tune a small open LLM with self-generated data and RL from automated
feedback (REFINE-AF, arXiv 2505.06548), and score it on SuperNI."""

__version__ = "0.1.0"
