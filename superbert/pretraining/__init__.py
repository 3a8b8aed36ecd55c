"""SuperPLM pre-training (pre_training.py): the run's config, arch sampling, the objective, the
loop, and the assembly of a run (teacher, student, data, resume)."""
