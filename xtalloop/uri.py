"""MongoDB connection strings: find the user, the hosts and any password, without a DNS lookup.

pymongo (``uri_parser.parse_uri``) cuts the URI at the first ``?`` and then
the first ``/``, and takes the user information as everything before the
last ``@`` of what is left; it requires ``:``, ``/``, ``?``, ``#`` and ``@``
inside a user name or password to be percent-encoded (RFC 3986). A user
who writes an unencoded password such as ``Le?ak`` or ``Leak/1`` therefore
gets a URI that pymongo would misread, and a parser that copied pymongo's
cuts would take a piece of the password for the host and print it. Here the
user information ends at the *last* ``@`` of the whole URI, so every
character that could belong to a password is on the user side, and
:func:`password_problem` refuses anything there that pymongo would not read
as a plain user name.
"""

from __future__ import annotations

import re

_SCHEMES = ("mongodb://", "mongodb+srv://")
_GEN_DELIMS = re.compile(r"[:/?#\[\]@]")
_PASSWORD_OPTIONS = re.compile(r"(?:^|[?&;])(tlsCertificateKeyFilePassword|sslPEMKeyPassword)=",
                               re.I)


def _split(uri: str) -> tuple[str, str, str, str]:
    """``(scheme, userinfo, hosts, rest)``: rest is the path and options, with their ``/``/``?``.

    The user information is everything before the last ``@`` (empty without one).
    """
    scheme, sep, remainder = uri.partition("://")
    if not sep:
        scheme, remainder = "", uri
    else:
        scheme += sep
    userinfo, at, after = remainder.rpartition("@")
    if not at:
        userinfo, after = "", remainder
    match = re.search(r"[/?#]", after)
    cut = match.start() if match else len(after)
    return scheme, (userinfo + at), _mask_ports(after[:cut]), after[cut:]


def _mask_ports(hosts: str) -> str:
    """``xtal:S3cret`` → ``xtal:***``: a port that is not a number may be a password."""
    return ",".join(re.sub(r":([^:\]]*[^\d:\]][^:\]]*)$", ":***", host)
                    for host in hosts.split(","))


def uri_userinfo(uri: str) -> str:
    """Everything between ``scheme://`` and the last ``@`` (empty if the URI names no user)."""
    return _split(uri)[1][:-1]


def uri_hosts(uri: str) -> str:
    """The host list of a MongoDB URI (``host1:port,host2``), never a user or password."""
    return _split(uri)[2]


def uri_netloc(uri: str) -> str:
    """The ``user@host1:port,host2`` part of a MongoDB URI (no DNS lookup, unlike pymongo)."""
    _, userinfo, hosts, _ = _split(uri)
    return userinfo + hosts


def password_problem(uri: str) -> str | None:
    """Why ``uri`` may hold a password (a message without the password), or None.

    A ``:`` in the user information is a password. So is any other character
    that pymongo would need percent-encoded there (``/``, ``?``, ``#``, ``@``,
    brackets): it means a password was cut at it, or that an ``@`` appears
    after the host list, which is ambiguous; both are refused rather than
    guessed. Options that carry a password (``tlsCertificateKeyFilePassword``)
    are refused too.
    """
    userinfo = uri_userinfo(uri)
    if ":" in userinfo:
        return ("holds a password: give it with password_env or password_file instead, "
                "so that it is never stored")
    if _GEN_DELIMS.search(userinfo):
        return ("has a '/', '?', '#' or '@' before its last '@': a password is never part of "
                "the uri (use password_env or password_file); percent-encode these characters "
                "in a user name (e.g. %40 for @)")
    for host in _split_raw_hosts(uri):
        port = host.rpartition("]")[2].rpartition(":")[2] if ":" in host else ""
        if not host or (":" in host.rpartition("]")[2] and not port.isdigit()):
            return ("host list: each host is name[:port] with a numeric port (a password? "
                    "give it with password_env or password_file, never in the uri)")
    query = uri.partition("?")[2]
    if match := _PASSWORD_OPTIONS.search(query):
        return (f"option {match[1]} holds a password: keep it out of the uri "
                "(it would be stored with the run)")
    return None


def _split_raw_hosts(uri: str) -> list[str]:
    after = uri.partition("://")[2].rpartition("@")[2]
    return re.split(r"[/?#]", after, maxsplit=1)[0].split(",")


def redact_uri(uri: str) -> str:
    """``mongodb://user:secret@host`` → ``mongodb://user:***@host``; nothing of a password kept.

    Anything before the last ``@`` that is not a plain user name is masked
    whole, and password-bearing options lose their values.
    """
    scheme, userinfo, hosts, rest = _split(uri)
    name = userinfo[:-1]
    if name and _GEN_DELIMS.search(name):
        user = name.split(":", 1)[0]
        name = f"{user}:***" if user and not _GEN_DELIMS.search(user) else "***"
    rest = re.sub(r"((?:tlsCertificateKeyFilePassword|sslPEMKeyPassword)=)[^&;#]*", r"\1***",
                  rest, flags=re.I)
    return f"{scheme}{name}{'@' if userinfo else ''}{hosts}{rest}"


def is_mongodb_uri(uri: str) -> bool:
    """Whether ``uri`` starts with one of the MongoDB schemes."""
    return uri.startswith(_SCHEMES)
