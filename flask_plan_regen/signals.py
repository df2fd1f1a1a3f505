"""Signals of a regeneration's life, sent with blinker as Flask and Flask-Login do.

Each is sent by the app (``sender`` is the app) once the change is committed,
with the keyword ``regeneration``: the regeneration's document as the status
route answers it. Which process sends it:

=============================  ================================================
``regeneration_queued``        web (a request queued it), or the process running
                               ``flask plan-regen requeue-failed``
``regeneration_started``       worker, each time an attempt starts
``regeneration_succeeded``     worker
``regeneration_failed``        worker, or whichever process swept a lost attempt
                               that had no attempts left
``regeneration_canceled``      web
=============================  ================================================

A receiver that raises is logged and never breaks the request or the job.
Nothing is built while a signal has no receiver for the app.
"""

from __future__ import annotations

import logging

from blinker import NamedSignal, Namespace
from flask import current_app
from flask_sqlalchemy.session import Session
from sqlalchemy.orm import scoped_session

from .models import Regeneration
from .previews import regeneration_document
from .state import get_state

logger = logging.getLogger("flask_plan_regen.signals")

_signals = Namespace()

regeneration_queued = _signals.signal("regeneration-queued")
regeneration_started = _signals.signal("regeneration-started")
regeneration_succeeded = _signals.signal("regeneration-succeeded")
regeneration_failed = _signals.signal("regeneration-failed")
regeneration_canceled = _signals.signal("regeneration-canceled")


def send(signal: NamedSignal, session: scoped_session[Session], generation_id: str) -> None:
    """Send ``signal`` about a committed change for the current app.

    A receiver's exception is logged, not raised.
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not signal.has_receivers_for(app):
        return
    regeneration = session.get(Regeneration, generation_id)
    if regeneration is None:
        return
    document = regeneration_document(get_state(app), regeneration)
    for receiver in signal.receivers_for(app):
        try:
            receiver(app, regeneration=document)
        except Exception:
            logger.exception("a receiver of %s raised; ignored", signal.name)
