"""lm-eval task folders of refine_af (installed as ``refine_af.lm_eval_tasks``).

Pass this directory to ``lm_eval --include_path``; ``refine_af.evaluation.tasks.tasks_dir()``
finds it in a source checkout and after ``pip install``.
"""
