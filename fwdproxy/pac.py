"""The proxy auto-config file (``/proxy.pac``): browsers and systems send HTTP and HTTPS through the proxy.

A PAC file is a JavaScript function ``FindProxyForURL(url, host)`` that browsers fetch once from a URL
("Automatic proxy configuration URL"). This one needs none of the PAC helper functions (no DNS lookups:
``isInNet``/``dnsResolve`` block the browser), only string tests, so any JavaScript engine can run it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

CONTENT_TYPE = "application/x-ns-proxy-autoconfig"
DIRECT_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")
"""Reached directly, like `fwdproxy env`'s NO_PROXY: loopback services are never the proxy's to fetch."""


def render(proxy_host: str, proxy_port: int, direct: Sequence[str] = DIRECT_HOSTS) -> str:
    """The PAC text: ``http:``/``https:`` (and ``ws:``/``wss:``) URLs through ``proxy_host:proxy_port``;
    loopback (127.0.0.0/8, ::1, localhost and its subdomains) and ``direct`` entries go DIRECT. An entry that
    starts with a dot, or any entry, also covers its subdomains (NO_PROXY's rules)."""
    shown = f"[{proxy_host}]" if ":" in proxy_host and not proxy_host.startswith("[") else proxy_host
    names = json.dumps([d.lower().lstrip(".") for d in direct])
    return f"""// fwdproxy: HTTP and HTTPS through {shown}:{proxy_port}; loopback and these hosts directly.
function FindProxyForURL(url, host) {{
  var direct = {names};
  var h = host.toLowerCase();
  if (h.charAt(h.length - 1) == ".") h = h.substring(0, h.length - 1);
  if (/^127\\.\\d+\\.\\d+\\.\\d+$/.test(h) || h == "::1" || h == "[::1]") return "DIRECT";
  for (var i = 0; i < direct.length; i++) {{
    var d = direct[i];
    if (h == d || (h.length > d.length && h.substring(h.length - d.length - 1) == "." + d)) return "DIRECT";
  }}
  var scheme = url.substring(0, url.indexOf(":")).toLowerCase();
  if (scheme == "http" || scheme == "https" || scheme == "ws" || scheme == "wss") {{
    return "PROXY {shown}:{proxy_port}";
  }}
  return "DIRECT";
}}
"""
