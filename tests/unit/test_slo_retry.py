"""SLO probes: which are measured once more (``load.kinds.worth_retrying``: flags about the machine, not the rate)
and how long each is (``probe_measurement``: long enough for its ``min_requests``)."""

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


def test_slow_probes_are_lengthened_to_their_min_requests():
    from servingbench.load.kinds import MAX_PROBE_WINDOWS_S, probe_measurement
    from servingbench.scenarios.schema import Measurement

    m = Measurement(warmup="0.5s", window="2s", windows=2, max_duration="8s", min_requests=600)
    assert probe_measurement(m, 400.0) is m  # 2 x 2 s at 400 rps: 1600 requests
    slow = probe_measurement(m, 50.0)  # 600 requests (x 1.2 margin) at 50 rps: 14.4 s of windows
    assert (slow.windows, slow.window, slow.max_duration) == (8, 2.0, 20.0)  # the workload's 4 s of slack kept
    crawl = probe_measurement(m, 1.0)
    assert crawl.windows * crawl.window == MAX_PROBE_WINDOWS_S  # capped: such a probe stays "insufficient"
