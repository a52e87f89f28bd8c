"""Orchestration of a run: recipe -> context -> distilled, evaluated, stamped set.

Public: :func:`~.engine.run` (``mdk run``), :func:`~.engine.launch_run` (several
processes), :func:`~.context.build_context` (a run's context, no global side effects),
:func:`~.evaluate.evaluate` and :func:`~.evaluate.run_evaluators` (``mdk evaluate``),
:func:`~.buffer.buffer_for_recipe` (``mdk buffer``) and :func:`~.baseline.make_baseline`
(``mdk baseline``). The other modules are the run's machinery: checkpoints
(:mod:`.statefile`), the run folder's lock (:mod:`.runlock`), the loss log (:mod:`.runlog`),
experiment trackers (:mod:`.tracking`), evaluation progress (:mod:`.progress`) and the
regularizer's share of a step (:mod:`.regularizer_steps`).
"""
