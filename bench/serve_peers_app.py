"""What a user would write instead of `tuneline serve`: a FastAPI route around a classifier.

    python -m bench.serve_peers_app --backend torch --model-dir DIR --port P
    python -m bench.serve_peers_app --backend onnx --model-dir DIR --bundle B --port P

`POST /predict {"texts": [...]}` -> `{"predictions": [{"label", "score"}]}`, a plain
synchronous route (FastAPI runs it in its thread pool) with a pydantic body, as the
FastAPI and transformers tutorials show it, under uvicorn with access logs off (as
`tuneline serve` runs):

- `torch`: transformers' `pipeline("text-classification")` over the fine-tuned weights
  (the project's model class: its mean pooling is what was trained), fp32 on torch.
- `onnx`: the bundle's fp32 graph (`model.onnx`) on a default ONNX Runtime session, the
  model folder's transformers tokenizer, softmax in numpy.

Both truncate to the model's max_length tokens, as training did. A benchmark peer, not
part of the package.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel


class PredictRequest(BaseModel):
    texts: list[str]


def torch_classifier(model_dir: Path):
    from transformers import pipeline

    from components.model.modeling import load_trained

    trained = load_trained(model_dir)
    trained.model.config.id2label = dict(enumerate(trained.labels))
    pipe = pipeline("text-classification", model=trained.model, tokenizer=trained.tokenizer,
                    device="cpu")
    max_length = int(trained.meta["max_length"])

    def classify(texts: list[str]) -> list[dict]:
        return pipe(texts, truncation=True, max_length=max_length)

    return classify


def onnx_classifier(model_dir: Path, bundle: Path):
    import json

    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    labels = json.loads((bundle / "labels.json").read_text())["labels"]
    max_length = int(json.loads((bundle / "export_config.json").read_text())["max_length"])
    session = ort.InferenceSession(str(bundle / "model.onnx"),
                                   providers=["CPUExecutionProvider"])

    def classify(texts: list[str]) -> list[dict]:
        enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True,
                        return_tensors="np")
        logits = session.run(["logits"], {"input_ids": enc["input_ids"].astype(np.int64),
                                          "attention_mask": enc["attention_mask"].astype(
                                              np.int64)})[0]
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = z / z.sum(axis=1, keepdims=True)
        return [{"label": labels[int(p.argmax())], "score": float(p.max())} for p in probs]

    return classify


def create_app(classify) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(request: PredictRequest) -> dict:
        return {"predictions": classify(request.texts)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["torch", "onnx"], required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--bundle", type=Path, help="onnx: the exported bundle folder")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    classify = (torch_classifier(args.model_dir) if args.backend == "torch"
                else onnx_classifier(args.model_dir, args.bundle))
    uvicorn.run(create_app(classify), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
