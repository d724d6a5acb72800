"""The top of the stack: the ``fmprog`` command and ``fmprog up``, the whole cluster on one machine.

- ``launcher.settings``: what ``fmprog up`` starts and where (``StackSettings``), validated first;
- ``launcher.supervisor``: starting, watching and stopping the services (``up``);
- ``launcher.process``: ``fmprog up`` as a child process for demos, tests and benchmarks;
- ``launcher.program_run``: ``fmprog program run``, one program on one image with the backends in process;
- ``launcher.options``: the ``--config`` option the commands share (a packaged configuration's
  name, or a path);
- ``launcher.cli``: the ``fmprog`` command.

Nothing below (the program runtime, services, router, policy) imports this package.
"""
