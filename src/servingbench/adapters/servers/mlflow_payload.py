"""MLflow pyfunc wrapper for an image or text payload model (``servingbench.models.preprocess``).

``mlflow.pyfunc.save_model(python_model=PayloadModel(), model_config={...})`` saves it (pickled by reference to this
module, which the scoring server imports from the installed servingbench).  ``predict`` is MLflow's pre-processing
place: the scoring server hands it ``{"inputs": [base64 JPEG files or strings]}`` as an array of strings, the shared
``Preprocessor`` turns them into the model's input tensor, and the zoo model runs on it.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np


class PayloadModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from servingbench.models.preprocess import load_preprocessor
        from servingbench.models.runtime import load_runtime

        cfg = context.model_config
        self.rt = load_runtime(cfg["artifact_dir"], fmt=cfg["model_format"], device="cpu", threads=int(cfg["threads"]))
        self.pre = load_preprocessor(cfg["artifact_dir"])

    def predict(self, context, model_input, params=None) -> Any:
        if hasattr(model_input, "to_numpy"):  # a DataFrame (dataframe_split / records): its one column
            model_input = model_input.to_numpy()
        return self.rt.predict(self.pre(np.asarray(model_input, dtype=object).reshape(-1)))
