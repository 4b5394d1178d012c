"""The overload probe's classification, on synthetic open-loop timelines: overload from t=4 to t=14, end at 39."""

from __future__ import annotations

import pytest

from servingbench.probes import overload as o

T_OVER, T_DROP, T_END = 4.0, 14.0, 39.0


def _steady(a, b, rate, latency, outcome="ok"):
    n = int((b - a) * rate)
    return [(a + k / rate, a + k / rate + latency, outcome) for k in range(n)]


def test_a_server_that_sheds_and_recovers():
    ev = (_steady(0, 4, 50, 0.004) + _steady(4, 14, 50, 0.005) + _steady(4, 14, 50, 0.001, "http 503")
          + _steady(14, 39, 50, 0.004))
    s = o.overload_summary(ev, T_OVER, T_DROP, T_END)
    assert s["behaviour"] == "sheds" and s["shed_during"] == 500
    assert s["recovery_s"] == pytest.approx(0.0)
    assert o.overload_verdict(s)[0] == "supported"


def test_a_server_that_queues_then_drains():
    # during the overload latency grows linearly to 5 s; afterwards the backlog drains over 8 s
    during = [(4 + k / 100, 4 + k / 100 + 0.5 * (k / 100), "ok") for k in range(1000)]
    after = [(14 + k / 50, 14 + k / 50 + max(0.004, 5 - (k / 50) * 0.625), "ok") for k in range(25 * 50)]
    s = o.overload_summary(_steady(0, 4, 50, 0.004) + during + after, T_OVER, T_DROP, T_END)
    assert s["behaviour"] == "queues" and not s["errors_during"]
    assert 7.0 <= s["recovery_s"] <= 9.0
    verdict, reason = o.overload_verdict(s)
    assert verdict == "partial" and "queues instead of shedding" in reason


def test_a_server_that_never_recovers():
    ev = _steady(0, 4, 50, 0.004) + _steady(4, 14, 100, 9.0, "timeout") + _steady(14, 39, 50, 9.0, "timeout")
    s = o.overload_summary(ev, T_OVER, T_DROP, T_END)
    assert s["behaviour"] == "times out" and s["recovery_s"] is None
    assert o.overload_verdict(s)[0] == "not_supported"
    assert o.overload_verdict(s, server_alive=False)[1] == "the server died under overload"


def test_twice_the_capacity_that_was_not_an_overload():
    ev = _steady(0, 4, 50, 0.004) + _steady(4, 14, 100, 0.004) + _steady(14, 39, 50, 0.004)
    s = o.overload_summary(ev, T_OVER, T_DROP, T_END)
    assert s["behaviour"] == "absorbs" and s["recovery_s"] == 0.0
    assert o.overload_verdict(s)[0] == "partial"


def test_client_ssl_for_each_kind_of_deployment(tmp_path):
    """The overload probe's aiohttp client speaks to plain, TLS and mutual-TLS deployments like the harness's
    requests session does (CA file, client certificate)."""
    import ssl

    from servingbench.runtime.secrets import make_certificates

    certs = make_certificates(tmp_path)
    assert o.client_ssl("http://127.0.0.1:1/x", True) is True
    assert o.client_ssl("https://127.0.0.1:1/x", False) is False
    ctx = o.client_ssl("https://127.0.0.1:1/x", str(certs["ca_cert"]))
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    mutual = o.client_ssl("https://127.0.0.1:1/x", str(certs["ca_cert"]),
                          (str(certs["client_cert"]), str(certs["client_key"])))
    assert isinstance(mutual, ssl.SSLContext)  # the chain loaded (a wrong key would raise ssl.SSLError)
    with pytest.raises(ssl.SSLError):
        o.client_ssl("https://127.0.0.1:1/x", str(certs["ca_cert"]), (str(certs["client_cert"]),
                                                                       str(certs["server_key"])))
