"""Deployments of freestems. :mod:`freestems.deploy.modal_app` is the Modal app (GPU class and web tier):

modal deploy -m freestems.deploy.modal_app
"""
