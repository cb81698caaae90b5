"""RFB's VNC Authentication (security type 2), server side, for the bridge's TCP port.

An ordinary VNC client cannot present our ticket, so the ``--vnc`` port asks for a
one-time password instead: 8 random characters, printed once, checked with RFB's own
challenge-response (DES of a 16-byte random challenge, the password as the key with each
byte's bits reversed, RFC 6143 §7.2.2). DES is weak as a cipher, but here it guards one
connection to 127.0.0.1 within the ticket TTL, with a fresh password and a cap on wrong
answers: what it must stop is "whoever connects first gets the console". Every VNC
client speaks it (vncviewer, Remmina, virt-viewer, macOS Screen Sharing).
"""

from __future__ import annotations

import hmac
import secrets
import socket
import string
import struct

from novaconsole.vnc.probe import PixelFormat, RfbHandshake

SECURITY_VNC_AUTH = 2
#: Characters of a one-time password: VNC uses at most 8; unambiguous when read aloud.
PASSWORD_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")
PASSWORD_LENGTH = 8


class VncAuthFailed(Exception):
    """The client did not complete VNC Authentication; the message says why (no secret)."""


def new_password() -> str:
    """A one-time VNC password (8 characters, ~46 bits)."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(PASSWORD_LENGTH))


def _des_key(password: str) -> bytes:
    raw = password.encode("latin-1", "replace")[:8].ljust(8, b"\0")
    # RFB's quirk: each key byte's bits are mirrored before use as a DES key.
    return bytes(int(f"{b:08b}"[::-1], 2) for b in raw)


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """The 16 bytes a client answers to ``challenge`` knowing ``password``."""
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    try:
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # cryptography < 43
        from cryptography.hazmat.primitives.ciphers.algorithms import (  # type: ignore[attr-defined,no-redef,unused-ignore]
            TripleDES,
        )
    # TripleDES with K1 = K2 = K3 is single DES.
    encryptor = Cipher(TripleDES(_des_key(password) * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()


def _exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise VncAuthFailed("the client closed the connection during the handshake")
        data += chunk
    return bytes(data)


def serve_vnc_auth(sock: socket.socket, password: str) -> tuple[int, int]:
    """Our side of the handshake up to SecurityResult; returns the client's RFB version.

    Raises VncAuthFailed (after telling the client, where its version lets us) when the
    client's answer is wrong or it speaks something else.
    """
    sock.sendall(b"RFB 003.008\n")
    greeting = _exact(sock, 12)
    if greeting[:4] != b"RFB " or greeting[-1:] != b"\n":
        raise VncAuthFailed("the client is not speaking RFB")
    try:
        version = (int(greeting[4:7]), int(greeting[8:11]))
    except ValueError:
        raise VncAuthFailed("the client's RFB version is not valid") from None
    minor = 3 if version < (3, 7) else min(version[1], 8)
    if minor == 3:
        sock.sendall(struct.pack(">I", SECURITY_VNC_AUTH))
    else:
        sock.sendall(bytes([1, SECURITY_VNC_AUTH]))
        if _exact(sock, 1)[0] != SECURITY_VNC_AUTH:
            raise VncAuthFailed("the client chose a security type other than VNC Authentication")
    challenge = secrets.token_bytes(16)
    sock.sendall(challenge)
    answer = _exact(sock, 16)
    if not hmac.compare_digest(answer, vnc_auth_response(password, challenge)):
        reason = b"wrong password"
        if minor == 8:
            sock.sendall(struct.pack(">II", 1, len(reason)) + reason)
        else:
            sock.sendall(struct.pack(">I", 1))
        raise VncAuthFailed("wrong VNC password")
    sock.sendall(struct.pack(">I", 0))
    return 3, minor


def server_init_bytes(handshake: RfbHandshake) -> bytes:
    """The ServerInit message ``handshake`` received, re-encoded for our own client."""
    pf: PixelFormat = handshake.pixel_format
    name = handshake.name.encode("utf-8")
    return (
        struct.pack(">HH", handshake.width, handshake.height)
        + pf.pack()
        + struct.pack(">I", len(name))
        + name
    )
