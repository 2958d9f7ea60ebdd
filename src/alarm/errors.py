"""One exception type for mistakes a user can make; the CLI prints its message as one line."""


class AlarmError(Exception):
    """A user-fixable problem: bad config, malformed data, missing file, unreachable server.

    The message says what is wrong and how to fix it.
    """


_SECRET_PARAM = ("key", "token", "secret", "pass", "auth", "sig", "credential", "session", "code")


def redact_url(url) -> str:
    """``url`` as it may be printed or logged: a ``user:password@`` part and the values of query parameters
    that look like credentials (``api_key=``, ``token=``, ``sig=`` …) replaced by ``***``."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    text = str(url)
    try:
        parts = urlsplit(text)
    except ValueError:  # not a URL at all (e.g. an unbalanced "[" host): show nothing of it
        return "<unreadable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if any(s in k.lower() for s in _SECRET_PARAM) else v) for k, v in pairs],
                          safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
