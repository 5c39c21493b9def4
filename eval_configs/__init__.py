"""The eval configs of ``refineaf eval`` (installed as ``refine_af.eval_configs``).

``refineaf eval -c NAME`` finds ``NAME.yaml`` here from any directory;
``refine_af.evaluation.config.eval_configs_dir()`` finds this folder in a source checkout and
after ``pip install``.
"""
