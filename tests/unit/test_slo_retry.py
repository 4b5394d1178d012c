"""Which SLO probes are measured once more (``load.kinds.worth_retrying``): flags about the machine, not the rate."""

from servingbench.load.kinds import worth_retrying


def test_machine_flags_are_retried_rate_flags_are_not():
    assert not worth_retrying([])
    assert worth_retrying(["interference"]) and worth_retrying(["machine_speed_changed", "unstable"])
    # the generator lagging while steal or other work held its core: the machine, retried
    assert worth_retrying(["generator_bound", "interference"])
    # the generator at its own ceiling: a fact about the load the harness can make, kept
    assert not worth_retrying(["generator_bound"])
    # a flag about the answers (errors, too few requests...) is about the rate
    assert not worth_retrying(["interference", "errors"])
