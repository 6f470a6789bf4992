"""The team stack: PostgreSQL, MLflow and Prefect servers, the worker and model serving."""
