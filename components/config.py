"""Typed view of params.yaml: the single source of truth for every tunable number.

`load_params` reads the YAML, applies `--set key.path=value` overrides and validates the
result into `Params`. Unknown keys and wrong types fail with a `ConfigError` naming the
dotted key path, e.g. ``finetune.adamw.lr: Input should be a valid number``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = PROJECT_ROOT / "params.yaml"


def default_params_path() -> Path:
    """params.yaml of the working directory (how DVC stages run), else the project's."""
    local = Path.cwd() / "params.yaml"
    return local if local.exists() else DEFAULT_PARAMS


class ConfigError(ValueError):
    """params.yaml (or an override) is invalid; the message names the key."""


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    """Where things are. No stage fingerprint includes a path: a path says where an input or
    output lives, its content says what it is."""

    raw: Path = Path("data/demo/labeled.jsonl")
    unlabeled: Path | None = None
    corpus: Path = Path("data/demo")
    input: Path = Path("data/input")
    prepared: Path = Path("data/prepared")
    pretrained: Path = Path("artifacts/pretrained")
    model: Path = Path("artifacts/model")
    compressed: Path = Path("artifacts/compressed")
    checkpoints: Path = Path("artifacts/checkpoints")
    eval: Path = Path("artifacts/eval")
    export: Path = Path("artifacts/export")
    gate: Path = Path("artifacts/gate")
    metrics: Path = Path("metrics")
    sweep: Path = Path("artifacts/sweep")
    lock: Path = Path(".tuneline.lock")


class TaskConfig(Section):
    """What is predicted: one label per text, or one BIO tag per word (entities)."""

    type: Literal["sequence_classification", "token_classification"] = "sequence_classification"
    stride: int = Field(16, ge=0)


class DataConfig(Section):
    text_column: str = "text"
    label_column: str = "label"
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    labels: list[str] = Field(default_factory=list)
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(2000, ge=1)
    overlong: Literal["truncate", "reject"] = "truncate"
    max_bad_fraction: float = Field(0.2, ge=0.0, le=1.0)
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_salt: str = "tuneline"
    group_column: str | None = None
    near_duplicate_jaccard: float = Field(0.8, gt=0.0, le=1.0)
    chunk_rows: int = Field(65536, ge=1)
    max_rows: int | None = Field(20_000_000, ge=0)
    max_bytes: int | None = Field(10_000_000_000, ge=0)

    @model_validator(mode="after")
    def _fractions_leave_training_rows(self) -> DataConfig:
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("validation_fraction + test_fraction must be < 1")
        return self


class DemoConfig(Section):
    min_docstring_chars: int = Field(40, ge=1)
    max_docstring_chars: int = Field(600, ge=1)
    max_rows_per_family: int = Field(600, ge=1)
    seed: int = 7


AUTO = "auto"
Steps = Annotated[int, Field(ge=1)] | Literal["auto"]


class ModelConfig(Section):
    name_or_path: str = "packaged:all-MiniLM-L6-v2"
    # auto: the token length that keeps `length_coverage` of the training texts whole,
    # rounded up to a multiple of 16, at most `max_length_cap` and the backbone's limit.
    max_length: Annotated[int, Field(ge=8)] | Literal["auto"] = AUTO
    length_coverage: float = Field(0.95, gt=0, le=1)
    max_length_cap: int = Field(256, ge=8)
    pooling: Literal["cls", "mean"] = "mean"
    num_threads: int = Field(2, ge=1)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


class LoraConfig(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"])


class IA3Config(Section):
    target_modules: list[str] = Field(default_factory=lambda: ["key", "value", "output.dense"])
    feedforward_modules: list[str] = Field(default_factory=lambda: ["output.dense"])


class VirtualTokensConfig(Section):
    num_virtual_tokens: int = Field(16, ge=1)


class PeftConfig(Section):
    method: Literal["none", "lora", "ia3", "prompt_tuning", "prefix_tuning"] = "none"
    lora: LoraConfig = Field(default_factory=LoraConfig)
    ia3: IA3Config = Field(default_factory=IA3Config)
    prompt_tuning: VirtualTokensConfig = Field(default_factory=VirtualTokensConfig)
    prefix_tuning: VirtualTokensConfig = Field(default_factory=VirtualTokensConfig)


class MLMConfig(Section):
    probability: float = Field(0.15, gt=0.0, lt=1.0)


class SimCSEConfig(Section):
    temperature: float = Field(0.05, gt=0)


class PretrainConfig(Section):
    enabled: bool = False
    objective: Literal["mlm", "simcse"] = "simcse"
    max_steps: int = Field(75, ge=0)
    head_warmup_steps: int = Field(100, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    encoder_lr: float = Field(3e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, ge=0)
    freeze_embeddings: bool = False
    heldout_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    eval_batches: int = Field(20, ge=1)
    keep_if_better: bool = True
    probe_max_train_rows: int = Field(4000, ge=0)
    seed: int = 11
    mlm: MLMConfig = Field(default_factory=MLMConfig)
    simcse: SimCSEConfig = Field(default_factory=SimCSEConfig)


class EarlyStoppingConfig(Section):
    """Stop after `patience` evaluations that fall below the best by more than noise.

    With `noise_z` > 0 an evaluation within `noise_z` standard errors of the best
    (accuracy / macro-F1: sqrt(p (1 - p) / n) on the n validation items) counts as no
    worse, and the model shipped is the latest such evaluation, not a lucky early peak.
    """

    metric: Literal["accuracy", "macro_f1", "loss"] = "accuracy"
    patience: int = Field(4, ge=0)
    min_delta: float = Field(0.0, ge=0.0)
    noise_z: float = Field(1.0, ge=0.0)
    min_fraction: float = Field(0.3, ge=0.0, le=1.0)  # never stop before this share of steps


class StrategySection(Section):
    """Base of a strategy's own section: `finetune.<name>` holds the settings of strategy
    `name`, so the valid values of `finetune.strategy` are these sections' names."""


class AdamWConfig(StrategySection):
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: float = Field(1.0, ge=0)


class ZOSection(StrategySection):
    """Settings every zeroth-order strategy shares: what it perturbs, and the noise table.

    An estimate's variance grows with the number of values perturbed, so `target` narrows
    the trainable parameters to a low-dimensional subset (the rest stay frozen for the
    run): `all` (every trainable parameter: the whole model, or the PEFT adapters and head
    when `peft.method` is set), `bitfit` (biases and LayerNorms, plus the head) or
    `top_layers` (the last `top_layers` transformer layers, plus the head). Directions are
    slices of one fixed table of normals picked by seed (no per-step random numbers).
    """

    target: Literal["all", "bitfit", "top_layers"] = "all"
    top_layers: int = Field(2, ge=1)
    noise_table_size: int = Field(262_144, ge=1024)


class ZOGradSection(ZOSection):
    """Zeroth-order strategies that estimate a gradient (mezo, zo_sign, es).

    Embedding matrices are perturbed only on the rows a batch uses, since the loss does not
    depend on the others (`sparse_embeddings`).
    """

    sparse_embeddings: bool = True


class ZOConfig(ZOGradSection):
    """MeZO: central differences (L(+eps z) - L(-eps z)) / 2 eps over `n_samples` seeds,
    2 forwards each."""

    lr: float = Field(1e-5, gt=0)
    eps: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    n_samples: int = Field(1, ge=1)


class ZOSignConfig(ZOGradSection):
    lr: float = Field(1e-5, gt=0)
    eps: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class ESConfig(ZOGradSection):
    population: int = Field(8, ge=1)
    sigma: float = Field(1e-3, gt=0)
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class CEMConfig(ZOSection):
    """Cross-entropy method: a Gaussian over the target values (mean = the weights, one
    standard deviation per value), `population` samples a step, the best
    `elite_fraction` refit mean and variance (blended by `smoothing`), std floored at
    `sigma_min`."""

    target: Literal["all", "bitfit", "top_layers"] = "top_layers"
    top_layers: int = Field(1, ge=1)
    population: int = Field(16, ge=2)
    elite_fraction: float = Field(0.25, gt=0, lt=1)
    sigma: float = Field(3e-4, gt=0)
    sigma_min: float = Field(1e-4, gt=0)
    smoothing: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _elite_and_floor(self) -> CEMConfig:
        if self.elite_count < 1:
            raise ValueError(f"elite_fraction {self.elite_fraction} of population "
                             f"{self.population} selects no sample")
        if self.sigma_min > self.sigma:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be <= sigma ({self.sigma})")
        return self

    @property
    def elite_count(self) -> int:
        return int(round(self.elite_fraction * self.population))


class LinearProbeConfig(Section):
    l2: float = Field(1e-3, ge=0)
    max_iter: int = Field(200, ge=1)


class FinetuneConfig(Section):
    strategy: str = "adamw"
    head_init: Literal["random", "linear_probe"] = "linear_probe"
    freeze_embeddings: bool = True
    seed: int = 42
    batch_size: int = Field(16, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    sort_window: int = Field(20, ge=0)
    # auto: `epochs` passes over the train split, at least `min_steps`, at most `max_auto_steps`
    max_steps: Steps = AUTO
    epochs: float = Field(3.0, gt=0)
    min_steps: int = Field(500, ge=1)
    max_auto_steps: int = Field(3000, ge=1)
    eval_every: Steps = AUTO        # auto: a tenth of max_steps
    eval_max_batches: int = Field(0, ge=0)
    checkpoint_every: Steps = AUTO  # auto: eval_every
    budget_cpu_s: float = Field(0.0, ge=0)  # > 0: stop once the steps used this CPU time
    keep_checkpoints: int = Field(2, ge=1)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    adamw: AdamWConfig = Field(default_factory=AdamWConfig)
    mezo: ZOConfig = Field(default_factory=ZOConfig)
    zo_sign: ZOSignConfig = Field(default_factory=ZOSignConfig)
    es: ESConfig = Field(default_factory=ESConfig)
    cem: CEMConfig = Field(default_factory=CEMConfig)
    linear_probe: LinearProbeConfig = Field(default_factory=LinearProbeConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    nproc: int = Field(1, ge=1)
    dist_timeout_s: float = Field(300, gt=0)

    @field_validator("strategy")
    @classmethod
    def _strategy_is_known(cls, value: str) -> str:
        if value not in strategy_names():
            raise ValueError(f"unknown strategy {value!r}; valid: {', '.join(strategy_names())}")
        return value


def strategy_names() -> list[str]:
    """Valid `finetune.strategy` values: the names of the strategy sections of `finetune`."""
    return sorted(name for name, field in FinetuneConfig.model_fields.items()
                  if isinstance(field.annotation, type)
                  and issubclass(field.annotation, StrategySection))


class CompressConfig(Section):
    enabled: bool = False
    keep_layers: list[int] = Field(default_factory=lambda: [0, 2, 4])
    temperature: float = Field(2.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    hidden_weight: float = Field(1.0, ge=0)
    augment_copies: int = Field(2, ge=0)
    unlabeled: bool = True
    max_steps: int = Field(600, ge=1)
    budget_cpu_s: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0)
    eval_every: int = Field(100, ge=1)

    @field_validator("keep_layers")
    @classmethod
    def _some_layers(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("keep at least one layer")
        return value


class EvaluateConfig(Section):
    ece_bins: int = Field(15, ge=1)
    batch_size: int = Field(64, ge=1)


class OpenVinoExportConfig(Section):
    performance_hint: Literal["LATENCY", "THROUGHPUT"] = "LATENCY"
    pad_to_multiple_of: int = Field(16, ge=0)


class ExportConfig(Section):
    opset: int = Field(18, ge=13)
    per_channel: bool = True
    parity_max_rows: int = Field(0, ge=0)
    latency_repeats: int = Field(50, ge=1)
    int8_candidates: list[Literal["ort_dynamic", "ort_static", "openvino_int8"]] = Field(
        default_factory=lambda: ["ort_dynamic"], min_length=1)
    min_speedup: float = Field(1.1, ge=1.0)
    max_b1_latency_ratio: float = Field(1.0, gt=0.0)
    calibration_texts: int = Field(512, ge=1)
    openvino: OpenVinoExportConfig = Field(default_factory=OpenVinoExportConfig)


# Every metric some task type gates; a task type gates those of its own `metrics`.
GATED_METRICS = ("accuracy", "macro_f1", "entity_f1")


class NoiseConfig(Section):
    method: Literal["bootstrap", "mcnemar"] = "bootstrap"
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    resamples: int = Field(1000, ge=100)
    seed: int = 0


class GateConfig(Section):
    min_metrics: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 0.5, "macro_f1": 0.4, "entity_f1": 0.3})
    max_drop_vs_champion: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 0.0, "macro_f1": 0.01, "entity_f1": 0.01})
    compare: Literal["tolerance", "non_inferiority"] = "tolerance"
    non_inferiority_margin: dict[str, float] = Field(
        default_factory=lambda: {"accuracy": 0.01, "macro_f1": 0.01, "entity_f1": 0.01})
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    int8_confident_probability: float = Field(0.9, gt=0, le=1)
    int8_max_accuracy_drop: float = Field(0.01, ge=0, le=1)
    max_logit_diff: float = Field(1e-3, gt=0)
    max_latency_p95_ms: float = Field(50.0, gt=0)
    max_size_mb: float = Field(40.0, gt=0)
    fail_run_on_reject: bool = False

    @model_validator(mode="after")
    def _metrics_are_known(self) -> GateConfig:
        for section in ("min_metrics", "max_drop_vs_champion", "non_inferiority_margin"):
            for name in getattr(self, section):
                if name not in GATED_METRICS:
                    raise ValueError(f"{section}.{name}: unknown metric; valid: "
                                     f"{', '.join(GATED_METRICS)}")
        missing = set(self.max_drop_vs_champion) - set(self.non_inferiority_margin)
        if self.compare == "non_inferiority" and missing:
            raise ValueError(f"non_inferiority_margin needs a margin for {sorted(missing)}")
        return self


class RegistryConfig(Section):
    model_name: str = "tuneline-classifier"
    experiment: str = "tuneline"
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: Path = Path("mlartifacts")
    system_metrics: bool = False
    system_metrics_interval_s: float = Field(10, gt=0)


class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    max_batch: int = Field(32, ge=1)
    max_wait_ms: float = Field(5, ge=0)
    join_gap_ms: float = Field(5, ge=0)
    max_texts: int = Field(64, ge=1)
    # A text is truncated to model.max_length tokens when tokenized, as in training: the
    # character limit only bounds tokenizing work, and the body limit bounds memory.
    max_text_chars: int = Field(100000, ge=1)
    max_body_bytes: int = Field(2097152, ge=1024)
    reload_interval_s: float = Field(10, gt=0)
    threads: int = Field(2, ge=1)
    workers: int = Field(2, ge=1)
    bucket_call_cost_tokens: int = Field(64, ge=0)
    ort_spinning: bool = False
    gil_switch_interval_ms: float = Field(5.0, gt=0)
    # Back-pressure: what the server refuses at once rather than queue, and how long
    # anything may take (see deploy/README.md, "Overload").
    max_queued_texts: int = Field(256, ge=1)
    retry_after_s: int = Field(1, ge=0)
    request_timeout_s: float = Field(2.0, gt=0)
    stuck_batch_s: float = Field(20.0, gt=0)
    limit_concurrency: int = Field(128, ge=2)
    timeout_keep_alive_s: int = Field(5, ge=1)

    @model_validator(mode="after")
    def _limits_fit_each_other(self) -> ServeConfig:
        if self.max_queued_texts < self.max_texts:
            raise ValueError(f"max_queued_texts ({self.max_queued_texts}) must be at least "
                             f"max_texts ({self.max_texts}): a request of max_texts texts "
                             "would always be refused")
        if self.max_body_bytes < 6 * self.max_text_chars + 1024:  # JSON escapes <= 6 bytes
            raise ValueError(f"max_body_bytes ({self.max_body_bytes}) must be at least 6 x "
                             f"max_text_chars + 1024 ({6 * self.max_text_chars + 1024}): one "
                             "text of max_text_chars characters would not always fit")
        return self


class AlertsConfig(Section):
    """Thresholds of the Prometheus alert rules rendered into deploy/monitoring/."""

    rate_window_minutes: int = Field(5, ge=1)
    max_error_ratio: float = Field(0.01, gt=0, lt=1)
    error_for_minutes: int = Field(5, ge=0)
    max_p99_latency_s: float = Field(0.25, gt=0)
    latency_for_minutes: int = Field(10, ge=0)
    readiness_window_minutes: int = Field(15, ge=1)
    max_readiness_changes: int = Field(3, ge=1)
    max_model_age_days: float = Field(14, gt=0)
    max_psi: float = Field(0.25, gt=0)
    drift_for_minutes: int = Field(30, ge=0)
    reload_failing_for_minutes: int = Field(15, ge=0)
    not_ready_for_minutes: int = Field(5, ge=0)
    version_skew_for_minutes: int = Field(10, ge=0)
    absent_for_minutes: int = Field(5, ge=0)
    scrape_job: str = Field("tuneline-serve", min_length=1)
    runbook_base_url: str = Field("https://tuneline.example.com/operations/runbooks/",
                                  min_length=1)


class MonitoringConfig(Section):
    """Prediction-distribution monitoring: reference bins, live PSI window, alert rules."""

    confidence_bins: list[float] = Field(
        default_factory=lambda: [0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0])
    psi_window: int = Field(2000, ge=10)
    psi_min_predictions: int = Field(200, ge=1)
    psi_epsilon: float = Field(1e-4, gt=0, lt=0.1)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)

    @model_validator(mode="after")
    def _valid_bins_and_window(self) -> MonitoringConfig:
        from components.evaluate.drift import check_edges

        check_edges(self.confidence_bins)
        if self.psi_min_predictions > self.psi_window:
            raise ValueError("psi_min_predictions must be <= psi_window")
        return self


class ScheduleConfig(Section):
    cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    sensor_interval_s: int = Field(600, ge=10)
    dedupe_s: int = Field(3600, ge=0)
    when_busy: Literal["wait", "skip"] = "wait"
    slot_ttl_s: float = Field(300, gt=0)
    slot_renew_s: float = Field(30, gt=0)
    runs_at_once: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _renewed_before_expiry(self) -> ScheduleConfig:
        if self.slot_renew_s >= self.slot_ttl_s:
            raise ValueError("slot_renew_s must be < slot_ttl_s (a third of it or less "
                             "lets a renewal or two fail without losing the slot)")
        return self


class NotifyConfig(Section):
    webhook_url: str = ""
    events: list[Literal["promoted", "rejected", "rolled-back", "retrain-failed"]] = Field(
        default_factory=lambda: ["rejected", "rolled-back", "retrain-failed"])


class UIConfig(Section):
    host: str = "127.0.0.1"
    prefect_port: int = Field(4200, ge=1, le=65535)
    mlflow_port: int = Field(5000, ge=1, le=65535)
    start_timeout_s: float = Field(120, gt=0)
    auth_db: Path = Path("mlflow-auth.db")
    allowed_overrides: list[str] = Field(default_factory=lambda: [
        "finetune.*", "peft.*", "pretrain.*", "compress.*", "model.*", "gate.*",
        "schedule.when_busy"])
    max_nproc: int = Field(2, ge=1)
    data_roots: list[Path] = Field(default_factory=list)


class SearchRange(Section):
    """One searched param: a range (`low`..`high`, optionally on a log scale or a grid of
    `step`) or a list of `choices`. Whole numbers are searched as integers when the param
    itself is an integer."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self) -> SearchRange:
        if self.choices is not None:
            if not self.choices:
                raise ValueError("choices: give at least one value")
            if self.low is not None or self.high is not None or self.step or self.log:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (or choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: needs low > 0 and no step")
        return self


SPACE_FIELDS = set(SearchRange.model_fields)


def flatten_space(raw: Any, prefix: str = "") -> Any:
    """`{finetune: {adamw: {lr: {low: ..}}}}` -> `{"finetune.adamw.lr": {low: ..}}`.

    Lets `--set sweep.space.finetune.adamw.lr.high=1e-3` reach one bound of an entry
    written as `finetune.adamw.lr: {...}`; a null entry removes that param from the space.
    """
    if not isinstance(raw, dict):
        return raw
    return {k: v for k, v in _flatten_space(raw, prefix).items() if v is not None}


def _flatten_space(raw: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not set(value) & SPACE_FIELDS:
            for sub, spec in _flatten_space(value, name + ".").items():
                out[sub] = _merge(out.get(sub), spec)
        else:
            out[name] = _merge(out.get(name), value)
    return out


def _merge(old: Any, new: Any) -> Any:
    return {**old, **new} if isinstance(old, dict) and isinstance(new, dict) else new


class PrunerConfig(Section):
    method: Literal["hyperband", "successive_halving", "median", "none"] = "hyperband"
    startup_trials: int = Field(2, ge=0)
    warmup_steps: int = Field(100, ge=0)
    reduction_factor: int = Field(3, ge=2)


class BudgetConfig(Section):
    cpu_seconds: float = Field(3600.0, ge=0)
    wall_seconds: float = Field(0.0, ge=0)


def _default_portfolio() -> list[dict[str, Any]]:
    return [{"model.max_length": 256, "finetune.epochs": 5.0},
            {"finetune.adamw.lr": 1.0e-4, "finetune.epochs": 6.0},
            {"model.max_length": 128, "finetune.adamw.lr": 3.0e-4, "finetune.epochs": 3.0}]


def _default_space() -> dict[str, SearchRange]:
    return {"finetune.adamw.lr": SearchRange(low=3e-5, high=5e-4, log=True),
            "finetune.epochs": SearchRange(low=2.0, high=8.0),
            "finetune.adamw.warmup_ratio": SearchRange(low=0.0, high=0.2),
            "model.max_length": SearchRange(choices=["auto", 64, 128, 256])}


class SweepConfig(Section):
    study: str = "tuneline"
    storage: str | None = None
    n_trials: int = Field(16, ge=1)
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    seed: int = 0
    startup_trials: int = Field(6, ge=0)
    pruner: PrunerConfig = Field(default_factory=PrunerConfig)
    enqueue_current: bool = True
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    # Settings that do well across corpora, tried first; keys outside sweep.space (or
    # values outside its ranges) are dropped from a point, an emptied point is skipped.
    portfolio: list[dict[str, Any]] = Field(default_factory=_default_portfolio)
    confirm_seeds: int = Field(3, ge=0)
    workers: int = Field(2, ge=1)
    threads_per_worker: int = Field(1, ge=1)
    dask_address: str | None = None
    space: dict[str, SearchRange] = Field(default_factory=_default_space)

    @field_validator("space", mode="before")
    @classmethod
    def _flat_keys(cls, value: Any) -> Any:
        return flatten_space(value)

    @field_validator("enqueue", "portfolio", mode="before")
    @classmethod
    def _flat_enqueue(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        return [_flatten_values(v) if isinstance(v, dict) else v for v in value]

    @model_validator(mode="after")
    def _enqueued_keys_are_searched(self) -> SweepConfig:
        if not self.space:
            raise ValueError("space: give at least one param to search")
        for i, point in enumerate(self.enqueue):
            unknown = sorted(set(point) - set(self.space))
            if unknown:
                raise ValueError(f"enqueue[{i}]: {', '.join(unknown)} not in sweep.space")
        return self


def _flatten_values(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(_flatten_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Sections a sweep may not search: where things are, how they are served and watched, the
# sweep itself.
UNSEARCHABLE = ("paths", "registry", "serve", "monitoring", "schedule", "ui", "sweep")


class Params(Section):
    task: TaskConfig = Field(default_factory=TaskConfig)
    paths: PathsConfig = Field(default_factory=PathsConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    demo: DemoConfig = Field(default_factory=DemoConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    peft: PeftConfig = Field(default_factory=PeftConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    ui: UIConfig = Field(default_factory=UIConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @model_validator(mode="after")
    def _searched_keys_exist(self) -> Params:
        for key, spec in self.sweep.space.items():
            try:
                value = lookup(self, key)
            except ValueError as exc:
                raise ValueError(f"sweep.space.{key}: {exc}") from None
            if key.split(".")[0] in UNSEARCHABLE:
                raise ValueError(f"sweep.space.{key}: {key.split('.')[0]}.* cannot be searched")
            if isinstance(value, BaseModel | dict | list):
                raise ValueError(f"sweep.space.{key}: a section, not a single value")
            whole = value == AUTO or (isinstance(value, int) and not isinstance(value, bool))
            numeric = whole or isinstance(value, float)
            if spec.choices is None and not numeric:
                raise ValueError(f"sweep.space.{key}: not a number; search it with choices")
            if (spec.choices is None and whole
                    and not all(float(v).is_integer() for v in (spec.low, spec.high,
                                                                 spec.step or 1))):
                raise ValueError(f"sweep.space.{key}: an integer; low, high and step must be "
                                 "whole numbers")
        return self

    @model_validator(mode="after")
    def _task_fits(self) -> Params:
        if self.task.type == "token_classification" and self.compress.enabled:
            raise ValueError("compress.enabled: distillation is for sequence_classification; "
                             "turn it off for task.type=token_classification")
        if (self.task.type == "token_classification" and self.pretrain.enabled
                and self.pretrain.keep_if_better):
            raise ValueError("pretrain.keep_if_better: the guard's probe scores one label per "
                             "text; set it false for task.type=token_classification (the "
                             "gate still judges the fine-tuned model)")
        return self

    @model_validator(mode="after")
    def _precision_fits_device(self) -> Params:
        if self.finetune.precision == "fp16" and self.model.device in ("cpu", "mps"):
            raise ValueError(f"finetune.precision fp16 needs a CUDA device (model.device is "
                             f"{self.model.device}); use bf16 or fp32")
        return self

    def hash(self) -> str:
        """Short stable hash of the validated params (for lineage and caching)."""
        return params_hash(self.model_dump(mode="json"))


def lookup(params: BaseModel, key: str) -> Any:
    """The value at a dotted key (`finetune.adamw.lr`); ValueError naming an unknown key."""
    node: Any = params
    for i, part in enumerate(key.split(".")):
        if isinstance(node, BaseModel) and part in type(node).model_fields:
            node = getattr(node, part)
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ValueError(f"no such param ({'.'.join(key.split('.')[:i + 1])} is unknown)")
    return node


def params_hash(raw: dict[str, Any]) -> str:
    blob = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _format_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        msg = msg.removeprefix("Value error, ")
        lines.append(f"{key}: {msg}" if e["loc"] else msg)  # whole-model rules name their keys
    return "invalid params: " + "; ".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, _, raw = item.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML ({exc})") from exc
    return parts, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of `raw` with each ``key.path=value`` applied; unknown keys fail later."""
    out = copy.deepcopy(raw)
    for item in overrides or []:
        parts, value = parse_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                path = ".".join(parts[: i + 1])
                raise ConfigError(f"override {'.'.join(parts)}: {path} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def named_overrides(*, data_path: str | Path | None = None, strategy: str | None = None,
                    peft_method: str | None = None, pretrain: bool | None = None,
                    max_steps: int | None = None, n_trials: int | None = None,
                    dask_address: str | None = None, nproc: int | None = None) -> list[str]:
    """The `--set` equivalents of the named run options: `--input X` is `paths.raw=X`, ..."""
    sets = []
    if data_path is not None and str(data_path) != "":
        sets.append(f"paths.raw={data_path}")
    if strategy is not None:
        sets.append(f"finetune.strategy={strategy}")
    if peft_method is not None:
        sets.append(f"peft.method={peft_method}")
    if pretrain is not None:
        sets.append(f"pretrain.enabled={str(pretrain).lower()}")
    if max_steps is not None:
        sets.append(f"finetune.max_steps={max_steps}")
    if n_trials is not None:
        sets.append(f"sweep.n_trials={n_trials}")
    if dask_address:
        sets.append(f"sweep.dask_address={dask_address}")
    if nproc is not None:
        sets.append(f"finetune.nproc={nproc}")
    return sets


def validate_params(raw: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Read params.yaml (default: `default_params_path()`), apply overrides, validate.

    Raises:
        ConfigError: the file is missing or not a mapping, a key is unknown, or a value has
            the wrong type; the message names the dotted key path.
    """
    path = Path(path) if path else default_params_path()
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections")
    return validate_params(apply_overrides(raw, overrides))
