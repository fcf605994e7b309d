"""Registry: MLflow tracking, logged models and versions, lineage, model cards."""
