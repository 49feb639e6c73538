"""Training: the loop (``loop``), a run's settings and presets without torch (``config``), what a
checkpoint saves and how ``--resume`` gets it back (``state``), the run folder's rules
(``run_folder``), the optimizers, ``--time-budget`` and ``--attention auto``, data parallelism
(``distributed``), progress and MFU, ``--init-from``, ``gpt-report`` and the ``gpt-train`` CLI."""
