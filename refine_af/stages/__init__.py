"""The stages of REFINE-AF. Every stage module offers the same three functions:

``key(config, run_dir, variant=None) -> str``
    A fingerprint of everything the stage's outputs depend on: its settings, the model, the seed
    and the content of its inputs. Settings that only say how far to go (a target count, a step
    count) are not in it, so raising them continues the same outputs. The key is written to
    ``RUN/<stage folder>/key`` and into ``status.json``.
``is_done(config, run_dir, variant=None) -> bool``
    The stage finished with this key, as far as the config asks, and its outputs are there.
``run(config, run_dir, variant=None, *, restart=False, ...) -> dict``
    Do the work (resuming what an interrupted attempt left) and return the stage's summary.

``config`` is the whole :class:`refine_af.train_config.TrainConfig`; ``variant`` names the
instance writer (``refine_af``, ``baseline``, ``seeds_only``) for the stage-3 steps and is None
for stages 1 and 2. ``refineaf train`` (:mod:`refine_af.pipeline`) only calls these.
"""
