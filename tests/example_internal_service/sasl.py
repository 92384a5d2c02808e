"""The SASL initial responses this service sends (the bytes before base64).

- PLAIN (RFC 4616): authzid NUL authcid NUL password.
- XOAUTH2 (Google's format, also Microsoft's, Yahoo's and AOL's):
  `user=<address>^Aauth=Bearer <token>^A^A`.
- OAUTHBEARER (RFC 7628): a GS2 header naming the user, then key=value pairs ending `^A^A`.
On a token the server refuses, both token mechanisms answer a `+` challenge carrying a JSON
error; the client must answer it (XOAUTH2: an empty line; OAUTHBEARER: a lone ^A) to get the
final NO / 535 instead of waiting for ever.
"""

from collections.abc import Callable

_SEP = "\x01"


def plain(username: str, password: str) -> bytes:
    """Returns the PLAIN initial response."""
    return f"\0{username}\0{password}".encode()


def xoauth2(username: str, token: str) -> bytes:
    """Returns the XOAUTH2 initial response."""
    return f"user={username}{_SEP}auth=Bearer {token}{_SEP}{_SEP}".encode()


def oauthbearer(username: str, token: str, host: str, port: int) -> bytes:
    """Returns the OAUTHBEARER initial response (RFC 7628, section 3.1)."""
    gs2 = f"n,a={_saslname(username)},"
    return f"{gs2}{_SEP}host={host}{_SEP}port={port}{_SEP}auth=Bearer {token}{_SEP}{_SEP}".encode()


def token_response(mechanism: str, username: str, token: str, host: str, port: int) -> bytes:
    """Returns the initial response of XOAUTH2 or OAUTHBEARER."""
    if mechanism == "XOAUTH2":
        return xoauth2(username, token)
    if mechanism == "OAUTHBEARER":
        return oauthbearer(username, token, host, port)
    raise ValueError(f"not a token mechanism: {mechanism}")


def error_challenge_reply(mechanism: str) -> bytes:
    """What to answer a server's error challenge with, so it says NO at once."""
    return _SEP.encode() if mechanism == "OAUTHBEARER" else b""


def responder(mechanism: str, initial: bytes) -> Callable[[bytes | None], bytes]:
    """An authobject for imaplib/smtplib: the initial response first, then the error-challenge
    reply to anything the server sends after it."""
    sent = False

    def respond(_challenge: bytes | None = None) -> bytes:
        nonlocal sent
        if sent:
            return error_challenge_reply(mechanism)
        sent = True
        return initial

    return respond


def _saslname(name: str) -> str:
    # RFC 5801: "," and "=" in a saslname are escaped as =2C and =3D.
    return name.replace("=", "=3D").replace(",", "=2C")
