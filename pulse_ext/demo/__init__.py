"""``pulse-ext demo``: a local web page that runs PULSE searches and shows them live.

:mod:`pulse_ext.demo.app` holds the searches (one at a time, the rest queued), :mod:`pulse_ext.demo.server`
serves the page and a small JSON API over the standard library's HTTP server (no extra packages, no
assets from the internet); the page itself is ``static/``. docs/demo.md describes it.
"""
from pulse_ext.demo.app import DemoApp, DemoLimits
from pulse_ext.demo.server import DemoServer

__all__ = ["DemoApp", "DemoLimits", "DemoServer"]
