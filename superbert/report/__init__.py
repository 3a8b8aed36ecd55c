"""The end-of-pipeline report (`experiments/summarize.py`): `summary` gathers it (`build_summary`,
`write_summary`), `markdown` writes it out, `chance` says what a score means, `models` measures
saved model directories, `timing` times archs under the latency protocol, `plots` draws the
figures."""
