-- Run once, when the pgdata volume is new, by the postgres image's entrypoint as POSTGRES_USER (who then
-- owns them). POSTGRES_DB creates `mlflow` (the tracking and registry store); these are the other two.
CREATE DATABASE mlflow_auth;  -- MLflow's basic-auth users and permissions
CREATE DATABASE prefect;      -- the Prefect server's
