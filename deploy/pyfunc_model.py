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

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

TEXT_COLUMN = "text"


def texts_of(model_input: pd.DataFrame) -> list[str]:
    """The `text` column of a pyfunc input (MLflow has already applied the signature).

    Raises:
        ValueError: no `text` column, or an entry that is not a string.
    """
    if TEXT_COLUMN not in model_input.columns:
        raise ValueError(f"input needs a {TEXT_COLUMN!r} column; got {list(model_input.columns)}")
    values = model_input[TEXT_COLUMN].tolist()
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

    # The DataFrame hint tells MLflow to keep the explicit signature (no type-hint schema).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        preds = self.clf.predict(texts_of(model_input), batch_size=self.batch_size)
        return pd.DataFrame({"label": [p.label for p in preds],
                             "score": [p.score for p in preds],
                             "scores": [p.scores for p in preds]})


mlflow.models.set_model(TunelineClassifier())
