"""The router service: registers programs, answers frames, forwards feedback.

Domain code, knowing nothing of HTTP (the FastAPI routes in ``app`` only map its errors). What it
sends the policy and how answers are scored is the shared contract, :mod:`fmprog.contract`; the
router imports nothing of the policy.

- ``schemas``: wire types (``ProgramCreate``/``ProgramPublic``, ``AnswerResult``, ``FeedbackIn``/
  ``FeedbackResult``) and the stored ``AnswerRecord`` (one answered frame: its decision, trace,
  costs, answer) and ``FeedbackRecord``.
- ``store.Store``: persistence of programs, answers, feedback, label counts and the policy outbox
  on SQLite (the default) or PostgreSQL (several routers), SQLAlchemy Core over ``tables``, the
  schema migrated by Alembic (``migrations``) on open; thread-safe; feedback is resolved once per
  decision, whichever router takes it; old decisions are pruned (retention).
- ``candidates``: each function's candidate backends and costs, from the catalog.
- ``programs.ProgramRegistry``: validate a program with the runtime (or synthesise it first, for
  a task in words), resolve its candidates, have its policy spec checked, store it; delete keeps
  its answers open to feedback.
- ``synthesis.ProgramSynthesizer``: a task in words to a program: the model's program,
  validated, dry-run on generated frames, repaired with the model's help, cached by task;
  ``synthesis_reply``: the program in a model's reply, and whether a dry-run answer fits the task;
  ``synthesis_scenes``: the dry run's scenes that hold what the program looks for;
  ``prompt``: what the model is told (the program API rendered from the runtime, rules, examples);
  ``synthesis_cli``: ``fmprog program synth``.
- ``answering.Answerer``: run a program on a frame under the policy's decision, checked once (or
  the configured fallback, all-cheapest by default), record the answer and its trace.
- ``feedback.FeedbackHandler``: the task reward (``fmprog.contract.score_answer``) of the stored
  answer against the label, idempotent per decision; returns reward, executed sites and their costs.
- ``policy_client``: the policy service over HTTP (check, register, decide on the frame's raw
  bytes, feedback, delete); ``outbox``: messages for the policy kept until delivered, in order
  per program, each claimed by one router.
- ``policy_view``: what a program's policy has learned, as its recent decisions' traces show it:
  each backend's share of the calls per call site and context bucket (``GET /programs/{id}/policy``).
- ``errors``: ``NotFound`` (404), ``Conflict`` (409), ``Unavailable`` (503), the other
  ``RouterError``s (422).
"""
