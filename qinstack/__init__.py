"""The team stack: PostgreSQL, MLflow and Prefect servers, the worker and model serving, as
`python -m qinstack <command>` (qinstack/__main__.py), one module per service:

    settings.py   the settings from the environment, the credentials file (docker/.env)
    health.py     health checks (compose's, `python -m qinstack health`) and waiting for a service
    process.py    what the service processes share: console scripts, a server's environment, Stop
    postgres.py   a local PostgreSQL (`make stack`; compose runs the postgres image)
    servers.py    the MLflow and Prefect servers
    worker.py     the worker service and the worker that stops its flow runs on SIGTERM
    serving.py    model serving that follows the registry's aliases (scoring_app.py: the model server)
    data.py       the raw data the workers start from
    up.py         `make stack`: the servers as local processes under supervisord (supervisord.conf.j2)
"""
