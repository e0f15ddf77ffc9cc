"""The admin and agent HTTP API (OpenAPI at ``/docs``)."""

from tether.api.app import create_app
from tether.api.state import AppState, PolicyHolder

__all__ = ["AppState", "PolicyHolder", "create_app"]
