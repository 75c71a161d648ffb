"""Research drivers built on the package: the CPU demo, curation rounds, the paper's replication.

Nothing else in the package imports them; the ``premem demo``, ``premem curate`` and ``premem replicate``
commands run them.

- :mod:`.demo`: ``premem demo``, memorization vs generalization on a small GPT trained from scratch;
- :mod:`.curation`: ``premem curate``, Algorithm 1's rounds for several strategies and seeds;
- :mod:`.replication` (and :mod:`.replication_report`): ``premem replicate``, the three findings at CPU scale;
- :mod:`.recipe`: the model and optimiser settings they share.
"""
