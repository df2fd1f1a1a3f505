"""``rq worker -c bench.handwritten_settings``: the hand-written job's app, created once.

RQ imports this settings module in the worker's main process, before it forks work
horses, as a developer would to keep each job from creating the app again.
"""

from bench.handwritten import worker_app

app = worker_app()
