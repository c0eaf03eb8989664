"""``doctune studio``: the same pipeline as the CLI, in a local web page.

A small Starlette app (:mod:`doctune.studio.server`) serves one HTML page and a JSON/SSE
API. It reads docs with :mod:`doctune.data`, and runs every long or model-building step as
the CLI command itself, in its own process (``python -m doctune train ...``): a run started
here is a run folder like any other, and a run started from a terminal shows up here.

Nothing here is imported by ``doctune --help``; the web libraries come with the ``studio``
extra (``pip install "doctune[studio]"``).
"""

from __future__ import annotations
