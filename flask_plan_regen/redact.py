"""Credentials kept out of what the package prints: commands, configuration errors.

A URL carries credentials in its user info (``redis://user:password@host``,
``https://sk_live_...@proxy``) or in its query (``redis://host/0?password=...``)
under any name, so the rule does not depend on names: a password, or a user
name standing alone, and every query value become ``***``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

# A URL with a scheme, up to whitespace or a quote (it may sit inside a repr()).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# User info outside a URL that parses ("user:password@host", "HTTPS//token@host"): what
# stands before an "@", from the last space, quote or slash on.
_BARE_CREDENTIALS = re.compile(r"(?<![^\s'\"<>/])([^\s'\"<>/@:]*)(:?)[^\s'\"<>/@]*@")


def masked_url(url: str, keep: frozenset[str] = frozenset()) -> str:
    """``url`` safe to print: its password (or lone user name) and query values masked.

    The values of the query options named in ``keep`` (known to hold no secret,
    such as a certificate's path) are left as they are.
    """
    scheme, separator, _ = url.partition("://")
    if not separator:
        return _mask_bare_credentials(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable (a bad IPv6 host): show nothing of it
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        user_info, _, host = netloc.rpartition("@")
        user, has_password, _ = user_info.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}"
    masked = f"{scheme}://{netloc}{parts.path}"
    if parts.query:
        masked += "?" + "&".join(
            pair if name in keep else f"{name}={MASK}" if has_value else MASK
            for pair in parts.query.split("&")
            for name, has_value, _ in (pair.partition("="),)
        )
    return masked + (f"#{MASK}" if parts.fragment else "")


def mask_urls(text: str) -> str:
    """``text`` with every URL in it, and any user info outside one, masked."""
    return _mask_bare_credentials(_URL.sub(lambda match: masked_url(match.group(0)), text))


def _mask_bare_credentials(text: str) -> str:
    return _BARE_CREDENTIALS.sub(
        lambda match: f"{match.group(1)}:{MASK}@" if match.group(2) else f"{MASK}@", text
    )
