"""The streaming VQA benchmark: the paper's two tracks over the scene domain (or the authors' own
files), replayed through the runtime's executor and the policy code with feedback after every
answer, against the paper's baselines and an oracle.

- ``benchmarks.vqa.queries``: the track queries, each with its program and exact ground truth.
- ``benchmarks.vqa.tracks``: building the tracks' streams, and reading and writing them in the
  authors' published formats (which also load the paper's COCO tracks).
- ``benchmarks.vqa.cache``: backend outputs cached per (frame, call input, backend).
- ``benchmarks.vqa.harness``: the replay, every policy and baseline, and the oracle.
- ``benchmarks.vqa.report``: ``results.json``, a Markdown table and PNG plots.
"""
