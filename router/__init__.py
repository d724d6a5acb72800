"""The router service: registers programs, answers frames, forwards feedback.

Domain code, knowing nothing of HTTP (the FastAPI routes come later and only map its errors):

- ``schemas``: wire types (``ProgramCreate``/``ProgramPublic``, ``AnswerResult``, ``FeedbackIn``/
  ``FeedbackResult``) and the stored ``DecisionRecord``/``FeedbackRecord``.
- ``store.Store``: SQLite (WAL) persistence of programs, decisions and feedback; thread-safe;
  feedback is resolved once per decision.
- ``programs.ProgramRegistry``: validate a program with the runtime (or synthesise it first, for
  a task in words), resolve each call site's candidate backends and costs from the catalog, store
  it; delete keeps its decisions answerable for feedback.
- ``synthesis.ProgramSynthesizer``: a task in words to a program: the model's program,
  validated, dry-run on generated frames, repaired with the model's help, cached by task;
  ``prompt``: what the model is told (the program API rendered from the runtime, rules, examples);
  ``synthesis_cli``: ``fmprog program synth``.
- ``answering.Answerer``: run a program on a frame under the policy's decision (or the configured
  fallback, all-cheapest by default), record the decision and its trace.
- ``feedback.FeedbackHandler``: the task reward (``policy.rewards``) of the stored answer against
  the label, idempotent per decision; returns reward, executed sites and their costs.
- ``errors``: ``NotFound`` (404), ``Conflict`` (409), ``Unavailable`` (503), the other
  ``RouterError``s (422).
"""
