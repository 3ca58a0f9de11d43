"""Deployments of freestems. :mod:`freestems.deploy.modal_app` is the Modal app (its GPU and CPU classes and
its web function), the module Modal deploys:

modal deploy -m freestems.deploy.modal_app

Beside it, each with one job and none importing it: :mod:`~freestems.deploy.image` (the image),
:mod:`~freestems.deploy.probe` (the GPU and precision probe, the warm-ups), :mod:`~freestems.deploy.call`
(one call of a class), :mod:`~freestems.deploy.stores` (the app's Dicts, Queues and Volume),
:mod:`~freestems.deploy.web_tier` (the web function's options, settings and executor) and
:mod:`~freestems.deploy.settings` (the ``FREESTEMS_MODAL_*`` settings).
"""
