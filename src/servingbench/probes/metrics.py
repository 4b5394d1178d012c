"""The metrics probe: is there a metrics endpoint, and does it tell the truth under load?

The adapter names the endpoint (:meth:`servingbench.contract.Adapter.metrics_request`; Prometheus text format).
The probe scrapes it, sends a known number of requests from four threads (scraping once more while they run),
then scrapes until a counter has moved by exactly that number (Ray Serve exports its metrics every few seconds, so
it waits up to :data:`SETTLE_S`).  The verdict:

* ``supported``: the endpoint answers under load and some counter moved by the number of requests sent (within
  :func:`count_slack`); the evidence lists which of request count, latency histogram, queue time and batch size
  it exposes, by metric family;
* ``partial``: the endpoint answers, but no counter matched what was sent (the closest one is named);
* ``not_supported``: the adapter names no endpoint and ``GET /metrics`` on the inference port is not Prometheus
  text (its answer is the evidence);
* ``failed``: the adapter names an endpoint and it does not answer with Prometheus text.

The parsing and classification below are pure functions (``prometheus_client``'s text parser), tested on their
own in ``tests/unit/test_metrics_probe.py``.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from servingbench.contract import RequestSpec

SENT = 200  #: requests sent between the scrapes
THREADS = 4
SETTLE_S = 25.0  #: how long to wait for a counter to catch up (Ray Serve's metrics report every ~10 s)

Sample = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)

_LATENCY = re.compile(r"latency|duration|_seconds|_us$|_ms$|response_time|process_time", re.I)
_QUEUE = re.compile(r"queue|queued|pending|waiting|remaining_task", re.I)
_BATCH = re.compile(r"batch", re.I)
_REQUESTS = re.compile(r"request|infer|success|count|call|query|queries", re.I)
#: families every Python process exports (prometheus_client's defaults): not the framework's own metrics
_PROCESS = re.compile(r"^(process_|python_gc_|python_info)")


def parse(text: str) -> tuple[dict[str, str], dict[Sample, float]]:
    """(family name -> type, sample -> value) of a Prometheus text exposition.  Raises ValueError when the text
    is not Prometheus format (HTML, JSON, an error page)."""
    from prometheus_client.parser import text_string_to_metric_families

    types: dict[str, str] = {}
    samples: dict[Sample, float] = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    if not types:
        raise ValueError("no metric family in the answer")
    return types, samples


def count_slack(sent: int) -> int:
    """How far a request counter may be from ``sent`` and still count it (scrapes or health checks on the same
    port, a retried connection): 1 %, at least 2."""
    return max(2, sent // 100)


def _countable(name: str) -> bool:
    return not name.endswith(("_bucket", "_sum", "_created")) and not _PROCESS.match(name)


def counter_matches(before: dict[Sample, float], after: dict[Sample, float], sent: int) -> list[tuple[Sample, float]]:
    """Samples (counters, histogram/summary ``_count``s) that moved by ``sent`` within :func:`count_slack`, best
    first (exact, then names that look like request counters)."""
    slack = count_slack(sent)
    out = []
    for key, value in after.items():
        if not _countable(key[0]):
            continue
        delta = value - before.get(key, 0.0)
        if abs(delta - sent) <= slack:
            out.append((key, delta))
    out.sort(key=lambda kv: (abs(kv[1] - sent), not _REQUESTS.search(kv[0][0]), kv[0]))
    return out


def closest_counter(before: dict[Sample, float], after: dict[Sample, float], sent: int
                    ) -> tuple[Sample, float] | None:
    """The sample whose increase is closest to ``sent`` (for the evidence when none matched)."""
    moved = [(k, v - before.get(k, 0.0)) for k, v in after.items()
             if _countable(k[0]) and v - before.get(k, 0.0) > 0]
    return min(moved, key=lambda kv: abs(kv[1] - sent)) if moved else None


def classify(types: dict[str, str]) -> dict[str, list[str]]:
    """Which families expose a latency distribution, queue time/length and batch sizes (by name and type)."""
    own = {n: t for n, t in types.items() if not _PROCESS.match(n)}
    dist = {n for n, t in own.items() if t in ("histogram", "summary", "gaugehistogram")}
    return {
        "latency_histogram": sorted(n for n in dist if _LATENCY.search(n) and not _QUEUE.search(n)
                                    and not _BATCH.search(n)),
        "latency_counter": sorted(n for n, t in own.items() if t == "counter" and _LATENCY.search(n)
                                  and not _QUEUE.search(n)),
        "queue_time": sorted(n for n in own if _QUEUE.search(n)),
        "batch_size": sorted(n for n in own if _BATCH.search(n)),
    }


def sample_text(key: Sample, limit: int = 160) -> str:
    """``name{label="value",...}``, cut at ``limit`` characters (Ray's samples carry long worker and session ids)."""
    name, labels = key
    text = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}" if labels else "")
    return text if len(text) <= limit else text[:limit - 4] + " ...}"


# ---- the probe -----------------------------------------------------------------------------------------------------
def _scrape(live: Any, req: RequestSpec) -> tuple[int | str, str, float]:
    import requests

    t0 = time.perf_counter()
    try:
        r = live.http.request(req.method, live.url(req), data=req.body or None, headers=dict(req.headers),
                              timeout=10)
        return r.status_code, r.text, time.perf_counter() - t0
    except requests.RequestException as e:
        return type(e).__name__, str(e)[:200], time.perf_counter() - t0


def _load(live: Any, spec: Any, sent: int) -> dict[str, int]:
    """``sent`` inference requests from :data:`THREADS` threads; statuses counted."""
    xs = [spec.example_inputs(1, seed=i) for i in range(8)]
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            status = str(live.send(spec, xs[i % len(xs)], timeout=30)[0])
        except Exception as e:  # noqa: BLE001 - the count is the evidence
            status = type(e).__name__
        with lock:
            statuses[status] = statuses.get(status, 0) + 1

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(sent)))
    return statuses


def probe_metrics(ctx: Any) -> list[Any]:
    """Scrape the framework's metrics endpoint before, during and after :data:`SENT` requests (see the module)."""
    from servingbench.probes import Verdict

    v = Verdict("metrics", "not_run")
    spec = ctx.spec()
    with ctx.deploy() as live:
        req = ctx.adapter.metrics_request(live.deployment)
        claimed = req is not None
        if req is None:
            req = RequestSpec("GET", "/metrics", b"", {}, port="http")
        where = f"{req.method} {req.path} on port {req.port!r}"
        status, text, _ = _scrape(live, req)
        try:
            if status != 200:
                raise ValueError(f"HTTP {status}")
            types, before = parse(text)
        except ValueError as e:
            v.verdict = "failed" if claimed else "not_supported"
            v.reason = (f"the adapter's metrics endpoint {where} did not answer with Prometheus text" if claimed
                        else "no metrics endpoint: the adapter names none")
            v.evidence.append(f"{where} -> {status}: {e}; answer starts {text[:120]!r}")
            v.metrics = {"endpoint": where if claimed else None, "status": status}
            return [v]
        mid: dict[str, Any] = {}

        def scrape_under_load() -> None:
            time.sleep(0.2)
            mid.update(zip(("status", "text", "s"), _scrape(live, req)))

        scraper = threading.Thread(target=scrape_under_load, daemon=True)
        scraper.start()
        statuses = _load(live, spec, SENT)
        scraper.join(15)
        sent = statuses.get("200", 0)
        t0 = time.perf_counter()
        matches: list[tuple[Sample, float]] = []
        after = before
        while True:
            status, text, _ = _scrape(live, req)
            if status == 200:
                try:
                    types, after = parse(text)
                except ValueError:
                    pass
                matches = counter_matches(before, after, sent)
            if matches or time.perf_counter() - t0 > SETTLE_S:
                break
            time.sleep(0.5)
        settle = time.perf_counter() - t0
    kinds = classify(types)
    v.metrics = {"endpoint": where, "claimed_endpoint": claimed, "sent_ok": sent, "statuses": statuses,
                 "families": len(types), "scrape_under_load_status": mid.get("status"),
                 "scrape_under_load_s": mid.get("s"), "settle_s": round(settle, 2),
                 **{f"exposes_{k}": bool(names) for k, names in kinds.items()}}
    v.evidence.append(f"{where}: {len(types)} metric families; scraped under load ({THREADS} threads): "
                      f"{mid.get('status')} in {(mid.get('s') or 0) * 1e3:.0f} ms")
    v.evidence.append(f"sent {SENT} requests: {statuses}")
    for k, names in kinds.items():
        if names:
            v.evidence.append(f"{k.replace('_', ' ')}: {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
    if matches:
        key, delta = matches[0]
        v.verdict = "supported"
        v.metrics.update(request_counter=sample_text(key), counter_delta=delta)
        v.evidence.append(f"request count: {sample_text(key)} moved by {delta:g} for {sent} requests answered 200"
                          f" (seen {settle:.1f} s after the load)")
    else:
        near = closest_counter(before, after, sent)
        v.verdict = "partial"
        v.reason = (f"the endpoint answers, but no counter moved by the {sent} requests sent within "
                    f"{SETTLE_S:g} s")
        v.metrics.update(request_counter=None, counter_delta=None)
        v.evidence.append("closest counter: "
                          + (f"{sample_text(near[0])} moved by {near[1]:g}" if near else "none moved"))
    return [v]
