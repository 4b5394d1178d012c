"""The overload probe: offer twice the deployment's capacity, then half of it, and watch what the server does.

1. **Capacity**: a closed loop of :data:`CAPACITY_USERS` clients for :data:`CAPACITY_S` (the rate it sustains).
2. **Open loop** (constant arrivals, the send time fixed by the schedule, so client-side waiting counts as
   latency): ``UNDER x capacity`` for :data:`BEFORE_S`, ``OVER x capacity`` for :data:`OVER_S`, ``UNDER x
   capacity`` for :data:`AFTER_S`.  Each request has a :data:`TIMEOUT_S` client timeout.

The client is asyncio + aiohttp in the harness (at most :data:`CONNECTIONS` connections); sends it made more than
:data:`MAX_SEND_LAG_S` behind the schedule are counted and stated.  The probe prefers the ``cnn`` model when the
suite has it (tens to a few hundred requests/s on a CPU core: twice that is well inside one client core), else
``mlp``.

From the per-request timeline (:func:`overload_summary`, pure and unit-tested): p99 before, during and after the
overload; error kinds during it (HTTP 429/503 are *shed* load, client timeouts are *timeouts*); the answered
rate; and the **recovery time**: from the drop to half load until every later 1 s window has p99 within
``max(1.5 x p99 before, p99 before + 5 ms)`` and no error.  The behaviour is one of ``sheds`` (rejects the excess
quickly), ``times out``, ``queues`` (no errors, p99 grows), ``absorbs`` (2x was not an overload).

The deployment runs as configured and, when the adapter names its queue-limit knobs
(:meth:`servingbench.contract.Adapter.overload_limits`: MOSEC ``capacity``, LitServe ``timeout_s``, Ray Serve
``max_queued_requests``, Triton's queue policy ``max_queue_size``), once more with
them; the verdict is the better of the two, the evidence and metrics (``limited_*``) show both.

Verdicts: ``supported`` (sheds load and recovers), ``partial`` (queues or times out, then recovers within
:data:`AFTER_S`), ``not_supported`` (does not recover within :data:`AFTER_S`, or the server died), ``failed``
(no capacity could be measured).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import numpy as np

CAPACITY_USERS = 16
CAPACITY_S = 3.0
UNDER, OVER = 0.5, 2.0
BEFORE_S, OVER_S, AFTER_S = 4.0, 10.0, 25.0
TIMEOUT_S = 10.0
CONNECTIONS = 512
MAX_SEND_LAG_S = 0.1
SHED_STATUSES = (429, 503)

Event = tuple[float, float, str]  # (scheduled send, end, outcome: ok | http NNN | timeout | reset | client)


def _p99(xs: list[float]) -> float | None:
    return float(np.percentile(xs, 99)) if xs else None


def overload_summary(events: list[Event], t_over: float, t_drop: float, t_end: float,
                     window_s: float = 1.0) -> dict[str, Any]:
    """Classify an open-loop timeline around the overload ``[t_over, t_drop)`` (times in seconds)."""
    def lat(a: float, b: float) -> list[float]:
        return [e - s for s, e, o in events if a <= s < b and o == "ok"]

    def kinds(a: float, b: float) -> dict[str, int]:
        out: dict[str, int] = {}
        for s, _, o in events:
            if a <= s < b and o != "ok":
                out[o] = out.get(o, 0) + 1
        return out

    before = lat(t_over - BEFORE_S + window_s, t_over)  # the first window is the ramp from nothing
    p99_before = _p99(before)
    during = lat(t_over, t_drop)
    errors_during = kinds(t_over, t_drop)
    shed = sum(n for o, n in errors_during.items() if o in {f"http {s}" for s in SHED_STATUSES})
    timeouts = errors_during.get("timeout", 0) + errors_during.get("http 504", 0)  # the client's or the server's
    ok_during = len(during)
    bound = max(1.5 * p99_before, p99_before + 0.005) if p99_before is not None else None
    recovery = None
    windows = []
    t = t_drop
    while t + window_s <= t_end + 1e-9:
        w = lat(t, t + window_s)
        windows.append((t, _p99(w), sum(kinds(t, t + window_s).values())))
        t += window_s
    if bound is not None:
        for i, (start, _, _) in enumerate(windows):
            if all(p is not None and p <= bound and err == 0 for _, p, err in windows[i:]):
                recovery = start - t_drop
                break
    p99_during = _p99(during)
    if shed:
        behaviour = "sheds"
    elif timeouts:
        behaviour = "times out"
    elif p99_during is not None and bound is not None and p99_during > 5 * bound:
        behaviour = "queues"
    else:
        behaviour = "absorbs"
    return {
        "p99_before_s": p99_before, "p99_during_s": p99_during, "p99_after_bound_s": bound,
        "answered_during_rps": ok_during / (t_drop - t_over) if t_drop > t_over else None,
        "errors_during": errors_during, "shed_during": shed, "timeouts_during": timeouts,
        "errors_after": kinds(t_drop, t_end), "recovery_s": recovery, "behaviour": behaviour,
        "after_windows_p99_s": [p for _, p, _ in windows],
    }


def overload_verdict(s: dict[str, Any], server_alive: bool = True) -> tuple[str, str]:
    if not server_alive:
        return "not_supported", "the server died under overload"
    if s["recovery_s"] is None:
        return "not_supported", (f"{s['behaviour']}; p99 did not come back within {AFTER_S:g} s after the load "
                                 "dropped to half capacity")
    if s["behaviour"] == "sheds":
        return "supported", ""
    if s["behaviour"] == "absorbs":
        return "partial", "twice the measured capacity did not overload it (the capacity run underestimated it)"
    return "partial", (f"{s['behaviour']} instead of shedding load; recovered {s['recovery_s']:.0f} s after the "
                       "load dropped")


# ---- the client ------------------------------------------------------------------------------------------------
def _outcome(status: int | None, exc: BaseException | None) -> str:
    if exc is None:
        return "ok" if status is not None and 200 <= status < 300 else f"http {status}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return "reset"


async def _one(session: Any, req: tuple, t_send: float, out: list[Event]) -> None:
    method, url, body, headers = req
    status, exc = None, None
    try:
        async with session.request(method, url, data=body, headers=headers) as r:
            await r.read()
            status = r.status
    except Exception as e:  # noqa: BLE001 - every failure is an outcome
        exc = e
    out.append((t_send, time.monotonic(), _outcome(status, exc)))


async def _closed(session: Any, req: tuple, users: int, seconds: float) -> float:
    done = 0
    end = time.monotonic() + seconds

    async def user() -> None:
        nonlocal done
        while time.monotonic() < end:
            ev: list[Event] = []
            await _one(session, req, time.monotonic(), ev)
            if ev[0][2] == "ok":
                done += 1

    t0 = time.monotonic()
    await asyncio.gather(*(user() for _ in range(users)))
    return done / (time.monotonic() - t0)


async def _open(session: Any, req: tuple, schedule: list[tuple[float, float]], out: list[Event]
                ) -> tuple[float, int, int]:
    """Constant arrivals through ``schedule`` [(seconds, rate)]; returns (the largest send lag in s, the sends more
    than :data:`MAX_SEND_LAG_S` late, all sends)."""
    tasks = set()
    lag = 0.0
    late = sent = 0
    t = time.monotonic()
    for seconds, rate in schedule:
        n = max(1, int(seconds * rate))
        for k in range(n):
            at = t + k / rate
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            behind = time.monotonic() - at
            lag = max(lag, behind)
            late += behind > MAX_SEND_LAG_S
            sent += 1
            task = asyncio.ensure_future(_one(session, req, at, out))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        t += seconds
    if tasks:
        await asyncio.wait(tasks, timeout=TIMEOUT_S + 5)
    return lag, late, sent


def client_ssl(url: str, verify: Any, cert: Any = None) -> Any:
    """aiohttp's ``ssl`` argument for a deployment's session settings (``requests`` style: ``verify`` a CA file or
    a bool, ``cert`` a (certificate, key) pair for mutual TLS)."""
    import ssl

    if not url.startswith("https"):
        return True  # plain http: unused
    if not isinstance(verify, str) and not cert:
        return bool(verify)
    ctx = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else ssl.create_default_context()
    if not isinstance(verify, str) and not verify:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert) if isinstance(cert, (tuple, list)) else ctx.load_cert_chain(cert)
    return ctx


async def _drive(req: tuple, verify: Any, result: dict[str, Any], cert: Any = None) -> None:
    import aiohttp

    ssl_ctx = client_ssl(req[1], verify, cert)
    conn = aiohttp.TCPConnector(limit=CONNECTIONS, ssl=ssl_ctx)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout, trust_env=False) as session:
        await _closed(session, req, CAPACITY_USERS, 0.5)  # warm the connections
        cap = await _closed(session, req, CAPACITY_USERS, CAPACITY_S)
        result["capacity_rps"] = cap
        if cap <= 0:
            return
        events: list[Event] = []
        t0 = time.monotonic()
        result["t_over"] = t0 + BEFORE_S
        result["t_drop"] = t0 + BEFORE_S + OVER_S
        result["t_end"] = t0 + BEFORE_S + OVER_S + AFTER_S
        result["events"] = events
        schedule = [(BEFORE_S, UNDER * cap), (OVER_S, OVER * cap), (AFTER_S, UNDER * cap)]
        result["max_send_lag_s"], result["late_sends"], result["sends"] = await _open(session, req, schedule, events)


def _run(ctx: Any, model: str, options: dict[str, Any] | None) -> tuple[dict[str, Any], bool, list]:
    spec = ctx.spec(model)
    result: dict[str, Any] = {}
    errors: list[BaseException] = []
    cfg = {"options": {ctx.framework: options}, "label": "limited"} if options else {}
    with ctx.deploy(models=[model], **cfg) as live:
        req = live.codec.request(spec, spec.example_inputs(1, seed=0), live.secrets)
        wire = (req.method, live.url(req), req.body, dict(req.headers))

        def run() -> None:
            try:
                asyncio.run(_drive(wire, live.http.verify, result, live.http.cert))
            except BaseException as e:  # noqa: BLE001 - reported by the caller
                errors.append(e)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        th.join(CAPACITY_S + BEFORE_S + OVER_S + AFTER_S + TIMEOUT_S + 60)
        alive = all(s.exited() is None for s in live.servers)
    return result, alive, errors


def _ms(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:.1f} ms"


def _describe(v: Any, prefix: str, model: str, result: dict[str, Any], s: dict[str, Any], alive: bool) -> None:
    cap = result["capacity_rps"]
    v.metrics.update({f"{prefix}capacity_rps": cap, f"{prefix}max_send_lag_s": result.get("max_send_lag_s"),
                      f"{prefix}late_sends": result.get("late_sends"), f"{prefix}sends": result.get("sends"),
                      f"{prefix}server_alive": alive,
                      **{f"{prefix}{k}": val for k, val in s.items() if not isinstance(val, (dict, list))}})
    what = "limited " if prefix else ""
    v.evidence.append(f"{what}{model}: capacity {cap:.0f} rps ({CAPACITY_USERS} closed-loop clients, "
                      f"{CAPACITY_S:g} s); open loop {UNDER:g}x for {BEFORE_S:g} s, {OVER:g}x for {OVER_S:g} s, "
                      f"{UNDER:g}x for {AFTER_S:g} s, client timeout {TIMEOUT_S:g} s")
    v.evidence.append(f"{what}p99 before {_ms(s['p99_before_s'])}, during {_ms(s['p99_during_s'])}; answered "
                      f"during {(s['answered_during_rps'] or 0):.0f} rps; errors during {s['errors_during'] or 'none'},"
                      f" after {s['errors_after'] or 'none'}")
    rec = s["recovery_s"]
    v.evidence.append(f"{what}behaviour: {s['behaviour']}; recovery "
                      + (f"{rec:.0f} s after the drop" if rec is not None else f"not within {AFTER_S:g} s"))
    late, sends = result.get("late_sends") or 0, result.get("sends") or 0
    if late:
        v.evidence.append(f"{what}run: {late} of {sends} sends more than {MAX_SEND_LAG_S * 1e3:.0f} ms behind the "
                          f"schedule (at most {result['max_send_lag_s']:.2f} s): the client, not only the server, "
                          "was busy" + ("; the offered load was lower than planned" if late > 0.05 * sends else ""))


def probe_overload(ctx: Any) -> list[Any]:
    """Twice the measured capacity for 10 s between two stretches of half of it, as configured and, where the
    adapter names them (``Adapter.overload_limits``), with the framework's own queue limits (see the module)."""
    from servingbench.probes import Verdict

    v = Verdict("overload", "not_run")
    model = "cnn" if "cnn" in ctx.artifacts else "mlp"
    limits = ctx.adapter.overload_limits()
    verdicts = []
    for prefix, options in (("", None), ("limited_", limits)):
        if prefix and not options:
            v.evidence.append("no queue limit or timeout knob named by the adapter: unlimited behaviour only")
            continue
        if prefix:
            v.metrics["limited_options"] = str(options)
        result, alive, errors = _run(ctx, model, options)
        if errors or not result.get("capacity_rps"):
            verdicts.append(("failed", f"no capacity measured{' (limited)' if prefix else ''}: "
                             + (repr(errors[0]) if errors else "no request answered in the capacity run")))
            continue
        s = overload_summary(result.get("events", []), result["t_over"], result["t_drop"], result["t_end"])
        _describe(v, prefix, model, result, s, alive)
        verdict, reason = overload_verdict(s, alive)
        verdicts.append((verdict, (f"with {options}: " if prefix else "as configured: ") + (reason or "sheds")))
    rank = {"supported": 0, "partial": 1, "not_supported": 2, "failed": 3}
    best = min(verdicts, key=lambda vr: rank[vr[0]])
    v.verdict = best[0]
    v.reason = "; ".join(r for _, r in verdicts)
    return [v]
