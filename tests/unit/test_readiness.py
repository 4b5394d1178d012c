"""Issue 18 (readiness): the watcher's samples become the intervals the verdict is made of."""

from servingbench.probes import readiness_intervals


def test_a_server_that_is_ready_when_it_says_so():
    samples = [(0.1, False, "error: ConnectionError"), (0.2, False, "error: ConnectionError"), (0.3, True, "ok"),
               (0.4, True, "ok")]
    m = readiness_intervals(samples)
    assert (m["health_ready_s"], m["first_correct_s"], m["false_ready_samples"]) == (0.3, 0.3, 0)


def test_a_false_ready_window_is_measured_with_its_error_kinds():
    samples = [(0.1, False, "error: ConnectionError"), (0.2, True, "error: HTTP 503"), (0.5, True, "error: HTTP 503"),
               (0.9, True, "wrong"), (1.0, True, "ok"), (1.1, True, "ok")]
    m = readiness_intervals(samples)
    assert m["health_ready_s"] == 0.2 and m["first_correct_s"] == 1.0
    assert m["false_ready_samples"] == 3 and abs(m["false_ready_span_s"] - 0.8) < 1e-9  # 0.2 s to the first ok
    assert m["false_ready_kinds"] == {"error: HTTP 503": 2, "wrong": 1} and m["wrong_answers"] == 1


def test_inference_before_health_is_not_a_false_ready():
    m = readiness_intervals([(0.1, False, "ok"), (0.2, True, "ok")])
    assert m["first_correct_s"] == 0.1 and m["health_ready_s"] == 0.2 and m["false_ready_samples"] == 0


def test_one_slow_false_ready_poll_spans_until_the_next_correct_answer():
    # Ray Serve: /-/routes ready, one inference that timed out after 2 s, then correct answers
    m = readiness_intervals([(21.0, False, "error: ConnectionError"), (21.5, True, "error: ReadTimeout"),
                             (23.5, True, "ok"), (23.6, True, "ok")])
    assert m["false_ready_samples"] == 1 and abs(m["false_ready_span_s"] - 2.0) < 1e-9
