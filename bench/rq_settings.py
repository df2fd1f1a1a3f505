"""``rq worker -c bench.rq_settings``: a bare RQ worker with the host app loaded.

RQ imports this settings module in the worker's main process, so creating the app here
gives the memory baseline the issue asks for: plain ``rq worker`` plus the app.
"""

from examples.host_app import create_app

app = create_app()
