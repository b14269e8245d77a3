"""Machine-readable descriptions of the wire: ``proxy-core schema``.

Generated from the code, so that a peer can be written in another language:

- :func:`json_schema`: one JSON Schema (2020-12) document of everything the
  json codec puts on the wire: the handshake objects, the frames after it, the
  close codes, and a definition per registered message and frame type;
- :func:`asyncapi_document`: an AsyncAPI 3.0.0 document of the session
  protocol, its payloads those same schemas (``docs/asyncapi.yaml``);
- :func:`to_yaml`: a small deterministic YAML writer for such documents.

Programmatic use::

    from proxy_core.schema import asyncapi_document, to_yaml

    print(to_yaml(asyncapi_document()))
"""

from __future__ import annotations

from .asyncapi import asyncapi_document, to_asyncapi_schema
from .wire import close_codes, json_schema
from .yaml_emit import to_yaml

__all__ = ["asyncapi_document", "close_codes", "json_schema", "to_asyncapi_schema", "to_yaml"]
