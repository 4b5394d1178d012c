"""Feature probes against a real LitServe server: API key 401/403/200, TLS with the per-run CA, multi-model."""

from __future__ import annotations

import pytest

from servingbench.runtime.secrets import SecretStore
from servingbench.probes import ProbeContext, run_probe

pytestmark = pytest.mark.server


@pytest.fixture
def ctx(zoo_artifacts, tmp_path, no_leftovers):
    with SecretStore() as store:
        yield ProbeContext("litserve", zoo_artifacts, store, tmp_path / "work", tmp_path / "logs", None)


def test_api_key_rejects_then_accepts(ctx):
    [rec] = run_probe("auth", ctx)
    assert rec["verdict"] == "supported", rec
    m = rec["metrics"]
    assert m["no_credentials"] == 403 and m["wrong_credentials"] == 401 and m["right_credentials"] == 200
    assert m["open_paths"]["/health"] in (401, 403)  # LitServe gates its health endpoint too
    assert not rec["disagrees_with_claim"]


def test_tls_handshake_with_per_run_ca_and_mutual(ctx):
    [rec] = run_probe("tls", ctx)
    assert rec["verdict"] == "supported", rec
    text = " ".join(map(str, rec["evidence"]))
    assert "handshake verified with the per-run CA, correct output: True" in text
    assert rec["metrics"]["plaintext"] != 200
    assert rec["metrics"]["mutual"]["with_cert"] == 200 and rec["metrics"]["mutual"]["without_cert"] != 200


def test_multi_model_in_one_server(ctx):
    recs = {r["feature"]: r for r in run_probe("multi_model", ctx)}
    mm = recs["multi_model"]
    assert mm["verdict"] == "supported" and mm["metrics"]["servers"] == 1
    assert mm["metrics"]["pss_bytes"] > mm["metrics"]["single_model_pss_bytes"]
    assert recs["load_unload"]["verdict"] == "not_supported"
