"""The MLflow pyfunc of a registered version: the int8 bundle on ONNX Runtime + tokenizers.

Logged as models-from-code (`components.mlflow_model.build_pyfunc_model`): MLflow copies
this file into the model folder and runs it on load, so nothing is pickled. The bundle
files are the model's `bundle` artifact, and the `components` modules they need
(predictor, io) travel in the model's code folder, so loading needs only mlflow,
onnxruntime, tokenizers, numpy and pandas: no torch, no project checkout.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/tuneline-classifier@champion")
    model.predict(pd.DataFrame({"text": ["Return the socket's own address."]}))
    # -> DataFrame: label, score, scores ({label: probability})

On load, every bundle file is checked against the bundle's manifest and the int8 graph
against the sha256 recorded in the model config at registration.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

TEXT_COLUMN = "text"


def texts_of(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: a DataFrame with a `text` column, a Series, or a list.

    Raises:
        ValueError: no `text` column, or an entry that is not a string.
    """
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            raise ValueError(f"input needs a {TEXT_COLUMN!r} column; got "
                             f"{list(model_input.columns)}")
        values = model_input[TEXT_COLUMN].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, list | tuple):
        values = list(model_input)
    else:
        raise ValueError(f"input must be a DataFrame with a {TEXT_COLUMN!r} column or a list "
                         f"of strings, got {type(model_input).__name__}")
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"{TEXT_COLUMN}[{bad[0]}] is not a string: {values[bad[0]]!r}")
    return values


class TunelineClassifier(PythonModel):
    """Text in, label + top-1 score + every class probability out."""

    def load_context(self, context) -> None:
        from components.predictor import BundleIntegrityError, OnnxClassifier

        config = context.model_config or {}
        self.batch_size = int(config.get("batch_size", 32))
        self.clf = OnnxClassifier(context.artifacts["bundle"],
                                  threads=int(config.get("threads", 2)), verify=True)
        expected = config.get("sha256")
        if expected and self.clf.sha256 != expected:
            raise BundleIntegrityError(
                f"model.int8.onnx sha256 {self.clf.sha256} does not match the one recorded "
                f"at registration {expected}")

    def predict(self, context, model_input, params=None):
        import pandas as pd

        preds = self.clf.predict(texts_of(model_input), batch_size=self.batch_size)
        return pd.DataFrame({"label": [p.label for p in preds],
                             "score": [p.score for p in preds],
                             "scores": [p.scores for p in preds]})


mlflow.models.set_model(TunelineClassifier())
