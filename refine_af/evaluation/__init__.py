"""SuperNI evaluation: lm-eval tasks, the official metric, data loading, runs and reports."""
