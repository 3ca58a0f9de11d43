"""The HTTP service: ``POST /separate`` (Demucs-on-Modal compatible), async jobs, and the session WebSocket.

    from freestems.service import Settings, create_app

    app = create_app(Settings.from_env())      # an ASGI app; `freestems serve` runs it with uvicorn

Modules, one concern each: ``settings`` (every knob), ``errors`` (the one exception type and its JSON),
``challenges`` (proof of work), ``sessions`` (keys), ``limits`` (rate limits), ``network`` (client address,
Origin), ``uploads`` (streamed multipart), ``options`` (form validation), ``paths`` (the data folder),
``store`` (SQLite), ``cache`` (results by content), ``jobs`` (the manager), ``views`` (what a client is
shown of a job), ``follow`` (who follows a job; other containers' jobs), ``tokens`` (the job token check),
``parts`` (the running service's parts), ``websocket`` (the session protocol), ``app`` (routes),
``server`` (uvicorn). Where the model runs is :mod:`freestems.executors`.
"""

from .app import create_app
from .errors import ServiceError
from .settings import Settings, SettingsError

__all__ = ["ServiceError", "Settings", "SettingsError", "create_app"]
