"""Framework adapters: one short module per framework, registered through the ``servingbench.adapters`` entry-point
group (:mod:`servingbench.adapters.registry`).  The contract they implement is :mod:`servingbench.contract`; the
shared V2 codec is :mod:`servingbench.adapters.v2`; server scripts they copy into workdirs live in ``servers/``."""
