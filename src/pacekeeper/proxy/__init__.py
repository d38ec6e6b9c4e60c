"""pacekeeper.proxy: a local OpenAI-compatible gateway that governs every program on the machine.

``pacekeeper proxy --upstream https://api.openai.com/v1`` serves the upstream's API on
``http://127.0.0.1:8787/v1`` and sends every request through one
:class:`~pacekeeper.Governor` (queueing, pacing, retries, metrics): clients change only their
base_url. From Python, in a background thread::

    from pacekeeper.proxy import Proxy, ProxyConfig

    with Proxy(ProxyConfig(upstream="https://api.openai.com/v1", port=0), governor) as proxy:
        client = openai.OpenAI(base_url=proxy.base_url)

See docs/PROXY.md.
"""

from pacekeeper.proxy._app import REFUSED_HEADER, TOKEN_HEADER, ProxyApp
from pacekeeper.proxy._config import DEFAULT_PORT, ProxyConfig
from pacekeeper.proxy._server import Proxy

__all__ = ["DEFAULT_PORT", "REFUSED_HEADER", "TOKEN_HEADER", "Proxy", "ProxyApp", "ProxyConfig"]
