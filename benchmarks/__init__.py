"""Benchmarks that print numbers, their results (``results/``) and the streaming benchmark's tracks
(``tracks/``). ``benchmarks.vqa`` is the streaming VQA benchmark; the other modules are scripts,
run as ``python -m benchmarks.<name>``."""
