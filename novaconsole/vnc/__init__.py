"""VNC and serial console pieces of the core (no Textual).

``probe`` (noVNC URL, RFB handshake, transports), ``rfb`` (the sans-I/O RFB client),
``session`` (its threaded adapter), ``framebuffer``, ``encodings``, ``keys``, ``render``
(half blocks), ``png`` (screenshots) and ``serial`` (nova-serialproxy, raw terminal).
"""

from __future__ import annotations
