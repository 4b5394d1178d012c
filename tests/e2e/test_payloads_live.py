"""Issue 16: a server that preprocesses an image payload wrongly fails verification.

The deliberately broken variant: ``SERVINGBENCH_TEST_PREPROCESS_FAULT`` makes the server's shared
``Preprocessor`` squash each JPEG to the crop size (nearest neighbour) instead of resize-then-centre-crop, or skip
the normalisation; the references never read it.  ``servingbench verify`` against a real server must refuse it
with a message that names the model and the preprocessing.  (That the correct preprocessing verifies on every
framework is the contract suite's job: it serves ``cnn_image`` and ``encoder_text`` everywhere.)
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from servingbench.models.preprocess import FAULT_ENV

pytestmark = pytest.mark.server


@pytest.mark.parametrize("framework, fault", [("litserve", "resize"), ("fastapi", "normalize")])
def test_wrong_server_preprocessing_fails_verify(framework, fault, no_leftovers):
    env = {**os.environ, FAULT_ENV: fault}
    r = subprocess.run([sys.executable, "-m", "servingbench.cli", "verify", framework, "-m", "mlp", "-m", "cnn:image"],
                       capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    text = " ".join((r.stdout + r.stderr).split())  # rich wraps long lines
    assert r.returncode == 1, text[-3000:]
    assert "cnn_image: outputs differ from the reference at batch 1" in text, text[-3000:]
    assert "image payloads: the server's preprocessing must be servingbench.models.preprocess's" in text
    assert "verify passed" not in text
