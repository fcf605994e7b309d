"""The Open Inference Protocol (KServe V2) over HTTP/REST, beside /v1/predict.

So the server drops into KServe, Seldon Core or any client of that protocol:

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     200 when live / ready, 503 when not
    GET  /v2/models/{name}[/versions/{v}]      model metadata: input and output tensors
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer

`name` is `registry.model_name`; `v` (optional) must be the version being served. An
inference request carries one BYTES input tensor `text` of shape [n] (or [n, 1]) whose
data are the n texts as JSON strings. The answer has, per text of a classifier, `label`
(BYTES [n]), `score` (FP32 [n], the label's probability) and `scores` (FP32 [n, classes],
classes in the order of the metadata's `parameters.labels`); a request's `outputs` may
name a subset. A bundle whose answers are not class probabilities (token classification)
answers one BYTES tensor `answer`: per text, the JSON /v1/predict gives for it.

/infer is the same handler as /v1/predict with another body: the same bearer token,
limits (serve.max_texts, max_text_chars, max_body_bytes), batcher, deadline and metrics.
Errors are `{"error": message}` as the protocol asks: 400 for a request the protocol or the
model cannot take, 404 for another model or version, 401/413/503/504 as on /v1/predict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from deploy.serve.predict import PredictEndpoint, RequestError, validate_json

INPUT_NAME = "text"
CLASS_OUTPUTS = ("label", "score", "scores")
ANSWER_OUTPUT = "answer"
# /v2/models/{name}[/versions/{version}][/{verb}]; the verb is infer, ready or absent.
MODEL_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                        r"(?:/(?P<verb>infer|ready))?$")
INFER_ROUTE = "/v2/models/{name}/infer"  # the metrics label of every model's infer path


class TensorInput(BaseModel):
    name: StrictStr
    shape: list[int]
    datatype: StrictStr
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    name: StrictStr
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: StrictStr | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


@dataclass
class Parsed:
    """A valid inference request: the texts to classify and what to answer with."""

    texts: list[str]
    request: InferRequest


def infer_path(path: str) -> bool:
    """Whether `path` is a model's /infer route (the middleware's hot-path test)."""
    return path.startswith("/v2/models/") and path.endswith("/infer") and bool(
        MODEL_PATH.match(path))


def texts_of(tensor: TensorInput) -> list[str]:
    """The texts of a BYTES tensor of shape [n] or [n, 1] (data flat or nested by row)."""
    if tensor.name != INPUT_NAME:
        raise RequestError(400, f"unknown input {tensor.name!r}: this model takes one BYTES "
                                f"tensor named {INPUT_NAME!r}")
    if tensor.datatype != "BYTES":
        raise RequestError(400, f"input {INPUT_NAME!r} has datatype {tensor.datatype}; "
                                "it takes BYTES (the texts as JSON strings)")
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise RequestError(400, f"input {INPUT_NAME!r} has shape {shape}; it takes [n] or "
                                "[n, 1] with n >= 1")
    data = [row[0] if isinstance(row, list) and len(row) == 1 else row for row in tensor.data]
    if len(data) != shape[0]:
        raise RequestError(400, f"input {INPUT_NAME!r} has shape {shape} but {len(data)} "
                                "elements")
    bad = next((i for i, t in enumerate(data) if not isinstance(t, str)), None)
    if bad is not None:
        raise RequestError(400, f"input {INPUT_NAME!r} element {bad} is not a string "
                                "(binary tensor data is not supported: send JSON strings)")
    return data


class InferEndpoint(PredictEndpoint):
    """POST /v2/models/{name}[/versions/{v}]/infer: /v1/predict with the V2 body."""

    def __init__(self, *args: Any, model_name: str, current, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_name = model_name
        self.current = current  # () -> the served LoadedModel, or None

    def parse(self, body: bytes, scope: dict[str, Any]) -> Parsed:
        loaded = self.current()
        check_model(scope["path"], self.model_name, loaded.version if loaded else None)
        request = validate_json(InferRequest, body, 400)
        if len(request.inputs) != 1:
            raise RequestError(400, f"{len(request.inputs)} inputs given; this model takes one "
                                    f"BYTES tensor named {INPUT_NAME!r}")
        if request.outputs and loaded is not None:
            check_outputs([o.name for o in request.outputs], output_names(loaded.runtime))
        texts = texts_of(request.inputs[0])
        self.check_limits(texts)
        return Parsed(texts, request)

    def answer(self, parsed: Parsed, version: str, runtime: Any, rows: list) -> bytes:
        request = parsed.request
        outputs = (class_outputs(runtime.labels, rows) if runtime.distribution
                   else {ANSWER_OUTPUT: bytes_tensor(
                       ANSWER_OUTPUT, [orjson.dumps(runtime.render(r)).decode() for r in rows])})
        wanted = [o.name for o in request.outputs] if request.outputs else list(outputs)
        check_outputs(wanted, list(outputs))  # the model may have changed since parse
        body: dict[str, Any] = {"model_name": self.model_name, "model_version": version,
                                "outputs": [outputs[name] for name in wanted]}
        if request.id is not None:
            body["id"] = request.id
        return orjson.dumps(body)


def check_model(path: str, model_name: str, served: str | None) -> re.Match:
    """The parsed model path; 404 for another model name or a version not being served."""
    match = MODEL_PATH.match(path)
    if match is None or match["name"] != model_name:
        name = match["name"] if match else path
        raise RequestError(404, f"model {name!r} not found; this server serves "
                                f"{model_name!r}")
    if match["version"] is not None and match["version"] != served:
        raise RequestError(404, f"version {match['version']!r} of {model_name!r} is not "
                                f"served (serving {served!r})")
    return match


def output_names(runtime: Any) -> list[str]:
    return list(CLASS_OUTPUTS) if runtime.distribution else [ANSWER_OUTPUT]


def check_outputs(wanted: list[str], names: list[str]) -> None:
    unknown = [name for name in wanted if name not in names]
    if unknown:
        raise RequestError(400, f"unknown output(s) {unknown}; this model has {names}")


def bytes_tensor(name: str, values: list[str]) -> dict[str, Any]:
    return {"name": name, "datatype": "BYTES", "shape": [len(values)], "data": values}


def class_outputs(labels: list[str], probabilities: Any) -> dict[str, dict[str, Any]]:
    """label / score / scores tensors of class probabilities [n, classes]."""
    probabilities = np.asarray(probabilities, dtype=np.float64)  # one row per text
    best = probabilities.argmax(axis=1)
    rows = range(len(best))
    return {"label": bytes_tensor("label", [labels[b] for b in best]),
            "score": {"name": "score", "datatype": "FP32", "shape": [len(best)],
                      "data": probabilities[rows, best].astype(float).tolist()},
            "scores": {"name": "scores", "datatype": "FP32",
                       "shape": [len(best), len(labels)],
                       "data": probabilities.astype(float).ravel().tolist()}}


def model_metadata(model_name: str, loaded: Any) -> dict[str, Any]:
    """GET /v2/models/{name}: the served version, its runtime, and its tensors."""
    runtime = loaded.runtime
    if runtime.distribution:
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                   {"name": "score", "datatype": "FP32", "shape": [-1]},
                   {"name": "scores", "datatype": "FP32", "shape": [-1, len(runtime.labels)]}]
    else:
        outputs = [{"name": ANSWER_OUTPUT, "datatype": "BYTES", "shape": [-1]}]
    return {"name": model_name, "versions": [loaded.version],
            "platform": runtime.onnx.platform,
            "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
            "outputs": outputs,
            "parameters": {"labels": list(runtime.labels), "sha256": loaded.sha256}}
