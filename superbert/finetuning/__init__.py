"""Fine-tuning sub-archs on downstream tasks (superbert_run_en_classifier.py): the run's and each
task's config, task features and their cache, the model/loop/evaluation, and the evaluator run
over (arch, task, seed) jobs."""
