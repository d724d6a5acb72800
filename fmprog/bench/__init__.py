"""The streaming VQA benchmark: the paper's two tracks over the scene domain (or the authors' own
files), replayed through the runtime's executor and the policy code with feedback after every
answer, against the paper's baselines and an oracle.

- ``fmprog.bench.queries``: the track queries, each with its program and exact ground truth.
- ``fmprog.bench.tracks``: building the tracks' streams, and reading and writing them in the
  authors' published formats (which also load the paper's COCO tracks).
- ``fmprog.bench.cache``: backend outputs cached per (frame, call input, backend).
- ``fmprog.bench.harness``: the replay, every policy and baseline, and the oracle.
- ``fmprog.bench.report``: ``results.json``, a Markdown table and PNG plots.
"""
