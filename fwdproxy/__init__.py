"""fwdproxy: a forward HTTP/HTTPS caching proxy built as mitmproxy addons."""

__version__ = "0.1.0"
