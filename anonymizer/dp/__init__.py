"""Optional differential privacy for ``anonymizer run --epsilon E [--delta D] [--budget B]``.

- :mod:`anonymizer.dp.spec`: what is released per table, and the epsilon split;
- :mod:`anonymizer.dp.plan`: the split computed for a run (scales, thresholds), before any
  data is read;
- :mod:`anonymizer.dp.mechanism`: OpenDP's discrete Laplace mechanisms (imported lazily);
- :mod:`anonymizer.dp.budget`: the budget ledger in STATS that refuses overspending;
- :mod:`anonymizer.dp.release`: what the pipeline calls.

Contribution bounds are SQL (:func:`anonymizer.privacy.bounded_sql`); no noise is sampled
outside OpenDP. Without ``--epsilon`` nothing here changes a published byte.
"""
