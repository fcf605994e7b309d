"""The MLflow pyfunc of a registered version: the bundle's served int8 graph + tokenizers.

Logged as models-from-code (`components.registry.mlflow_model.build_pyfunc_model`): MLflow copies
this file into the model folder and runs it on load, so nothing is pickled. The bundle
files are the model's `bundle` artifact, and the `components` modules they need
(predictor, runtimes, io) travel in the model's code folder, so loading needs only mlflow,
onnxruntime, tokenizers, numpy and pandas (and openvino when the bundle's export chose an
OpenVINO graph): no torch, no project checkout.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/tuneline-classifier@champion")
    model.predict(pd.DataFrame({"text": ["Return the socket's own address."]}))
    # -> DataFrame: label, score, scores ({label: probability}); a token-classification
    #    version: entities ([{type, text, start, end, score}], character offsets)

On load, every bundle file is checked against the bundle's manifest and the served graph
(`served_graph`: the runtime and files its export_config.json names) against the sha256
recorded in the model config at registration.
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
        import json
        from pathlib import Path

        from components.release.predictor import BundleIntegrityError
        from components.task_types import of_bundle

        config = context.model_config or {}
        self.batch_size = int(config.get("batch_size", 32))
        bundle = context.artifacts["bundle"]
        export = json.loads((Path(bundle) / "export_config.json").read_text())
        # The bundle's task type answers: labels + scores, or entities (see `predict`).
        self.runtime = of_bundle(export).load_runtime(
            bundle, threads=int(config.get("threads", 2)), verify=True)
        self.clf = self.runtime.onnx  # the served graph's classifier (sha256, labels)
        expected = config.get("sha256")
        if expected and self.runtime.sha256 != expected:
            raise BundleIntegrityError(
                f"{self.clf.graph.file} sha256 {self.runtime.sha256} does not match the one "
                f"recorded at registration {expected}")

    # The DataFrame hint tells MLflow to keep the explicit signature (no type-hint schema).
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame(self.runtime.columns(texts_of(model_input), self.batch_size))


mlflow.models.set_model(TunelineClassifier())
