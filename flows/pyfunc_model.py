"""MLflow "model from code": the QIN package behind MLflow's pyfunc interface.

MLflow stores this file with the model and runs it at load time; the model package (weights, config, item
table) is attached as the artifact "package" and the `qin` library is bundled as code, so the logged model
loads without this project's training code or flows.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class QinModel(PythonModel):
    # Every row is checked by `predict` (qin/serving/request.py), more strictly than MLflow's signature
    # enforcement
    # (which casts 3.5 to 3): a server may call `predict` directly, without it (qinstack/scoring_app.py).
    checks_requests = True

    def load_context(self, context):
        from qin.serving.inference import load_package

        self.scorer = load_package(context.artifacts["package"], device="auto")

    def predict(self, context, model_input: pd.DataFrame, params=None):
        """Raw challenge rows (likes_level, views_level, item_id, item_seq as a list) -> click probability.
        A bad row is refused (qin/serving/request.py) as MLflow's invalid-parameter error, which its scoring
        server
        answers with HTTP 400 and the message naming the row, the column, what was expected and found."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from qin.serving.request import BadRequest

        try:
            return self.scorer.predict_frame(model_input)
        except BadRequest as exc:
            raise MlflowException(f"bad request: {exc}", error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(QinModel())
