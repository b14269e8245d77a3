"""An example third-party codec plug-in for proxy-core: ``zjson``, compressed JSON.

Installed, it is found by name (``codec="zjson"``) through the
``proxy_core.codecs`` entry point in this distribution's ``pyproject.toml``.
"""

from __future__ import annotations

from .codec import ZJsonCodec

__all__ = ["ZJsonCodec"]
