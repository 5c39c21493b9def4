"""The ``refineaf_superni`` lm-eval tasks (YAML + ``utils.py``); see README.md here."""
