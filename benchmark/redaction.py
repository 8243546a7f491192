"""No secret in sight: passwords and tokens masked in URLs and in the messages that quote them."""

from __future__ import annotations

import re

# The password of `scheme://user:password@host` runs to the last `@` before the query.
# SQLAlchemy reads `user:secret@pw@db` as password `secret` at host `pw@db`, but a user
# may have meant the password `secret@pw`: both readings are hidden.
_USERINFO_PASSWORD = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s'\"]*:)(?P<password>[^\s'\"?]*)(?P<tail>@)")
# `?password=...`, `&sslpassword=...`, `;token=...`, a libpq `password=...`: any key that
# names a secret, in any case.
_SECRET_PARAMETER = re.compile(
    r"(?i)(?P<head>(?<![\w.\-])[\w.\-]*(?:password|passwd|pwd|token|secret|api[_-]?key)[\w.\-]*=)"
    r"(?P<password>[^&;#\s'\"]+)(?P<tail>)")


def mask_password(text: str) -> str:
    """`scheme://user:secret@host` becomes `scheme://user:***@host`, and `?password=secret`
    becomes `?password=***`, wherever they appear."""
    for pattern in (_USERINFO_PASSWORD, _SECRET_PARAMETER):
        text = pattern.sub(r"\g<head>***\g<tail>", text)
    return text


def mask_secrets_of(url: str, text: str) -> str:
    """`text` (a driver's message) with every password of `url` masked, also where the
    driver quotes a piece of one: for `user:secret@pw@db` it names the host `pw@db`."""
    secrets = [match["password"] for pattern in (_USERINFO_PASSWORD, _SECRET_PARAMETER)
               for match in pattern.finditer(url)]
    pieces = {piece for secret in secrets for piece in (secret, *secret.split("@")) if piece}
    for piece in sorted(pieces, key=len, reverse=True):
        text = text.replace(piece, "***")
    return mask_password(text)
