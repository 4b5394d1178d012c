"""The metrics probe's pure parts: Prometheus text parsing, the counter that matches what was sent, and which
families expose latency, queue time and batch sizes (texts shaped like the frameworks' own)."""

from __future__ import annotations

import pytest

from servingbench.probes import metrics as m

MOSEC_LIKE = """\
# HELP mosec_service_batch_size Batch size of each stage
# TYPE mosec_service_batch_size histogram
mosec_service_batch_size_bucket{stage="infer",le="1"} %(b1)d
mosec_service_batch_size_bucket{stage="infer",le="+Inf"} %(n)d
mosec_service_batch_size_sum{stage="infer"} %(n)d
mosec_service_batch_size_count{stage="infer"} %(n)d
# HELP mosec_service_process_duration_second Duration of each stage
# TYPE mosec_service_process_duration_second histogram
mosec_service_process_duration_second_bucket{stage="infer",le="0.01"} %(n)d
mosec_service_process_duration_second_bucket{stage="infer",le="+Inf"} %(n)d
mosec_service_process_duration_second_sum{stage="infer"} 0.5
mosec_service_process_duration_second_count{stage="infer"} %(n)d
# HELP mosec_service_remaining_task Number of tasks remaining
# TYPE mosec_service_remaining_task gauge
mosec_service_remaining_task 0
# HELP process_cpu_seconds_total CPU
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total %(n)d
"""

TRITON_LIKE = """\
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="mlp",version="1"} %(n)d
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="mlp",version="1"} %(e)d
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="mlp",version="1"} 1234
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="mlp",version="1"} 99999
"""


def test_parse_reads_families_and_samples():
    types, samples = m.parse(MOSEC_LIKE % {"n": 10, "b1": 10})
    assert types["mosec_service_batch_size"] == "histogram"
    assert samples[("mosec_service_batch_size_count", (("stage", "infer"),))] == 10


@pytest.mark.parametrize("text", ["<html>404 Not Found</html>", '{"detail": "Not Found"}', ""])
def test_what_is_not_prometheus_text_is_refused(text):
    with pytest.raises(ValueError):
        m.parse(text)


def test_the_counter_that_moved_by_the_requests_sent_is_found():
    _, before = m.parse(MOSEC_LIKE % {"n": 7, "b1": 7})
    _, after = m.parse(MOSEC_LIKE % {"n": 207, "b1": 207})
    matches = m.counter_matches(before, after, 200)
    names = [k[0] for k, _ in matches]
    # _count samples match; buckets, sums and the process's own counters never do
    assert names and all(n.endswith("_count") for n in names)
    assert not any(n.startswith("process_") or n.endswith(("_bucket", "_sum")) for n in names)


def test_a_counter_off_by_more_than_the_slack_does_not_match():
    _, before = m.parse(TRITON_LIKE % {"n": 0, "e": 0})
    _, after = m.parse(TRITON_LIKE % {"n": 150, "e": 40})
    assert m.counter_matches(before, after, 200) == []
    key, delta = m.closest_counter(before, after, 200)
    assert key[0].startswith("nv_inference_request_success") and delta == 150


def test_exact_beats_near_and_request_names_come_first():
    _, before = m.parse(TRITON_LIKE % {"n": 0, "e": 0})
    _, after = m.parse(TRITON_LIKE % {"n": 200, "e": 201})
    (best, delta), second = m.counter_matches(before, after, 200)
    assert best[0].startswith("nv_inference_request_success") and delta == 200
    assert second[0][0].startswith("nv_inference_exec_count")


def test_slack_is_one_percent_at_least_two():
    assert m.count_slack(200) == 2 and m.count_slack(1000) == 10


def test_classify_by_name_and_type():
    k = m.classify(m.parse(MOSEC_LIKE % {"n": 1, "b1": 1})[0])
    assert k["latency_histogram"] == ["mosec_service_process_duration_second"]
    assert k["batch_size"] == ["mosec_service_batch_size"]
    assert k["queue_time"] == ["mosec_service_remaining_task"]
    t = m.classify(m.parse(TRITON_LIKE % {"n": 1, "e": 1})[0])
    assert t["latency_histogram"] == []  # Triton's durations are cumulative counters: a mean, not a distribution
    assert t["latency_counter"] == ["nv_inference_request_duration_us"]
    assert t["queue_time"] == ["nv_inference_queue_duration_us"]


def test_sample_text():
    assert m.sample_text(("x_total", (("a", "1"), ("b", "2")))) == 'x_total{a="1",b="2"}'
    assert m.sample_text(("x", ())) == "x"
