"""The graceful-drain probe: stop the server the framework's documented way while it is under steady load.

The probe starts the deployment, runs :data:`THREADS` client threads (each its own keep-alive connection) in a
closed loop for :data:`LOAD_BEFORE_S`, then stops the deployment exactly as the harness always does: the
adapter's graceful signal (``LaunchSpec.stop_signal``: SIGINT for LitServe, SIGTERM for the others), a grace period,
SIGKILL only after it.  Meanwhile a prober thread opens a *new* connection every 50 ms and sends one request.

Every request is kept as (start, end, outcome).  From them:

* **in flight at the signal** (started before it, not finished): how many ``completed`` (2xx), ``failed`` (an
  HTTP error status) or were ``reset`` (the connection dropped: reset, closed, timed out);
* **after the signal**, on the existing connections and on new ones: answered, refused, HTTP errors; the time until
  new connections were first refused;
* **exit**: seconds from the signal until the process tree was gone, and whether it needed SIGKILL.

Verdicts (:func:`drain_verdict`): ``supported`` (every in-flight request completed and the tree exited by itself
within the grace period), ``partial`` (it exited by itself, but some in-flight requests failed or were reset, or
none was in flight), ``not_supported`` (every in-flight request was dropped, or it had to be killed), ``failed``
(no request completed before the signal: nothing to judge).
The classification is :func:`drain_summary` (a pure function, unit-tested with synthetic timelines).
"""

from __future__ import annotations

import threading
import time
from typing import Any

THREADS = 8
LOAD_BEFORE_S = 1.5
PROBE_EVERY_S = 0.05

Event = tuple[float, float | None, str]  # (start, end or None, outcome: ok | http NNN | reset | refused | error)


def outcome_of(exc: BaseException | None, status: int | None) -> str:
    """``ok`` for 2xx, ``http NNN`` for another status; ``refused`` when the connection could not be opened;
    ``reset`` when an open connection dropped (reset, closed, timed out)."""
    if exc is None:
        return "ok" if status is not None and 200 <= status < 300 else f"http {status}"
    import requests

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, requests.ConnectionError) and ("refused" in text.lower() or "Errno 111" in text):
        return "refused"
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return "reset"
    return f"error {type(exc).__name__}"


def _count(events: list[Event]) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, _, o in events:
        out[o] = out.get(o, 0) + 1
    return out


def drain_summary(load: list[Event], probes: list[Event], t_signal: float, t_exit: float) -> dict[str, Any]:
    """Classify the load threads' requests and the new-connection probes around the signal (times: monotonic)."""
    before = [e for e in load if e[1] is not None and e[1] <= t_signal]
    in_flight = [e for e in load if e[0] < t_signal and (e[1] is None or e[1] > t_signal)]
    after = [e for e in load if e[0] >= t_signal]
    flight = _count(in_flight)
    new = [e for e in probes if e[0] >= t_signal]
    refused = [e for e in new if e[2] == "refused"]
    first_refused = min((e[0] for e in refused), default=None)
    return {
        "completed_before_signal": sum(1 for e in before if e[2] == "ok"),
        "in_flight_at_signal": len(in_flight),
        "in_flight_completed": flight.get("ok", 0),
        "in_flight_failed": sum(n for o, n in flight.items() if o.startswith(("http", "error"))),
        "in_flight_reset": flight.get("reset", 0) + flight.get("refused", 0),
        "in_flight_outcomes": flight,
        "after_signal_existing": _count(after),
        "after_signal_new_connections": _count(new),
        "new_connections_refused_after_s": None if first_refused is None else first_refused - t_signal,
        "new_connections_answered_after_signal": sum(1 for e in new if e[2] == "ok"),
        "exit_s": t_exit - t_signal,
    }


def _client(url_req: Any, stop: threading.Event, out: list[Event], lock: threading.Lock, live: Any,
            new_each_time: bool, every_s: float = 0.0) -> None:
    session = live.new_session()
    method, url, body, headers = url_req
    try:
        while not stop.is_set():
            if new_each_time:
                session.close()
            t0 = time.monotonic()
            exc, status = None, None
            try:
                r = session.request(method, url, data=body, headers=headers, timeout=15)
                status = r.status_code
            except Exception as e:  # noqa: BLE001 - every failure is an outcome
                exc = e
            with lock:
                out.append((t0, time.monotonic(), outcome_of(exc, status)))
            if exc is not None or every_s:
                stop.wait(every_s or 0.01)
    finally:
        session.close()


def probe_drain(ctx: Any) -> list[Any]:
    """Stop the deployment with its graceful signal under steady load (see the module)."""
    from servingbench.probes import Verdict

    v = Verdict("graceful_drain", "not_run")
    spec = ctx.spec()
    load: list[Event] = []
    probes: list[Event] = []
    lock = threading.Lock()
    stop_load, stop_probe = threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    with ctx.deploy() as live:
        if live.remote is not None:
            v.reason = "a remote target: it is not ours to stop"
            return [v]
        req = live.codec.request(spec, spec.example_inputs(1, seed=0), live.secrets)
        url_req = (req.method, live.url(req), req.body, dict(req.headers))
        try:
            for _ in range(THREADS):
                threads.append(threading.Thread(target=_client, args=(url_req, stop_load, load, lock, live, False),
                                                daemon=True))
            threads.append(threading.Thread(target=_client, daemon=True, args=(
                url_req, stop_probe, probes, lock, live, True, PROBE_EVERY_S)))
            for t in threads:
                t.start()
            time.sleep(LOAD_BEFORE_S)
            signal_name = live.servers[0].spec.stop_signal.name if live.servers else "?"
            t_signal = time.monotonic()
            live.stop()  # the graceful signal, the grace period, SIGKILL only after it
            t_exit = time.monotonic()
            report = live.stop_reports[-1] if live.stop_reports else None
        finally:
            stop_load.set()
            stop_probe.set()
            for t in threads:
                t.join(20)
    with lock:
        s = drain_summary(list(load), list(probes), t_signal, t_exit)
    graceful = all(r.graceful for r in live.stop_reports) if live.stop_reports else None
    s["graceful_exit"] = graceful
    s["stop_signal"] = signal_name
    s["killed"] = [k for r in live.stop_reports for k in r.killed]
    v.metrics = {k: val for k, val in s.items() if not isinstance(val, dict)}
    v.evidence.append(f"{THREADS} keep-alive clients for {LOAD_BEFORE_S:g} s ({s['completed_before_signal']} "
                      f"answered), then {signal_name}: {s['in_flight_at_signal']} in flight -> "
                      f"{s['in_flight_outcomes'] or 'none'}")
    refused = s["new_connections_refused_after_s"]
    v.evidence.append(f"after the signal: existing connections {s['after_signal_existing'] or 'sent nothing'}; "
                      f"new connections {s['after_signal_new_connections'] or 'none tried'}"
                      + (f", first refused {refused * 1e3:.0f} ms after the signal" if refused is not None else ""))
    v.evidence.append(f"exit {s['exit_s']:.2f} s after the signal, "
                      + ("by itself" if graceful else f"killed after the grace period: {s['killed']}"))
    v.verdict, v.reason = drain_verdict(s, report is not None)
    return [v]


def drain_verdict(s: dict[str, Any], stopped: bool = True) -> tuple[str, str]:
    """(verdict, reason) from :func:`drain_summary` plus ``graceful_exit`` and ``stop_signal``."""
    sig = s.get("stop_signal", "the graceful signal")
    n, ok = s["in_flight_at_signal"], s["in_flight_completed"]
    if not stopped or not s["completed_before_signal"]:
        return "failed", "no request completed before the signal: nothing to judge"
    if not s.get("graceful_exit"):
        return "not_supported", f"did not exit within the grace period after {sig}: killed"
    if not n:
        return "partial", f"no request was in flight at {sig}: the drain was not observed"
    if ok == n:
        return "supported", ""
    verdict = "partial" if ok else "not_supported"
    return verdict, f"{n - ok} of {n} requests in flight at {sig} failed or were reset"
