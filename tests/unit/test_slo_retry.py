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
    # the same two windows, each longer (7.2 s, to the half second up), and one window of slack (the workload had 4 s)
    assert (slow.windows, slow.window, slow.max_duration) == (2, 7.5, 22.5)
    crawl = probe_measurement(m, 1.0)
    assert crawl.windows * crawl.window == MAX_PROBE_WINDOWS_S  # capped: such a probe stays "insufficient"
    tight = probe_measurement(m.model_copy(update={"max_duration": 4.0}), 50.0)
    assert tight.max_duration == tight.windows * tight.window  # no slack in the workload: none added


def test_a_slow_probes_windows_are_judged_like_a_fast_ones():
    """Ray Serve's quick-suite probes at 12.5-50 rps were all "unstable": fifteen 2 s windows of ~25 requests each,
    whose p50s moved by 30 % on sampling noise alone.  Longer windows keep the number compared (and the noise)
    like a fast probe's: simulated lognormal latencies (median 16 ms, sigma 0.35) at 12.5 rps, Poisson arrivals."""
    import numpy as np

    from servingbench.load.kinds import probe_measurement
    from servingbench.measure.stats import stable_tail
    from servingbench.scenarios.schema import Measurement

    m = Measurement(warmup="1s", window="2s", windows=2, tolerance=0.15, max_duration="8s", min_requests=300)
    rng = np.random.default_rng(1)

    def stable_share(pm, rate: float, trials: int = 200) -> float:
        ok = 0
        for _ in range(trials):
            counts = rng.poisson(rate * pm.window, pm.windows)
            p50 = [float(np.median(rng.lognormal(np.log(0.016), 0.35, max(int(c), 1)))) for c in counts]
            tput = [c / pm.window for c in counts]
            ok += stable_tail(tput, p50, pm.windows, pm.tolerance, [int(c) for c in counts]) is not None
        return ok / trials

    slow = probe_measurement(m, 12.5)
    assert slow.windows == m.windows
    assert stable_share(slow, 12.5) > 0.9
    fifteen = m.model_copy(update={"windows": 15})  # the old way: more windows of the same length
    assert stable_share(fifteen, 12.5) < 0.2


def test_an_answer_the_machine_decided_is_marked_not_believed():
    """The quick suite's searches (session 8), reduced to their probes: which answers are the server's."""
    from servingbench.measure.stats import slo_machine_limited

    def search(met, *points):
        return {"max_rate": met, "generator_limited": False, "reason": "r",
                "points": [{"rate": r, "verdict": v, "flags": list(f)} for r, v, f in points]}

    # MLServer: 200 and 300 passed, a clean failure only above them, both confirmations flagged for steal
    mlserver = search(None, (200, "pass", ()), (400, "fail", ()), (300, "pass", ()), (350, "fail", ("unstable",)),
                      (300, "fail", ("unstable", "interference")), (250, "fail", ("interference",)),
                      (200, "fail", ("interference",)))
    why = slo_machine_limited(mlserver)
    assert why and "interference" in why and "300 rps passed but was not confirmed" in why
    # Ray Serve: a clean failure at 25 rps, nothing passed: "none" is the server's answer
    ray = search(None, (200, "fail", ("too_few_requests", "unstable")), (50, "fail", ()), (25, "fail", ()),
                 (12.5, "insufficient", ()))
    assert slo_machine_limited(ray) is None
    # LitServe: everything above 500 rps unsettled (a growing queue): the answer stands
    litserve = search(500.0, (500, "pass", ()), (800, "fail", ("unstable", "late_sends")), (600, "fail", ("unstable",)))
    assert slo_machine_limited(litserve) is None
    # the rate met, and the only failure above it was steal: a lower bound
    bound = search(500.0, (500, "pass", ()), (600, "fail", ("interference",)))
    assert "only a lower bound of 500 rps" in slo_machine_limited(bound)
    # the generator limited it: a lower bound, whatever the flags
    assert "generator-limited" in slo_machine_limited({**litserve, "generator_limited": True})
