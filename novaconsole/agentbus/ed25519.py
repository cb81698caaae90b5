"""Ed25519 keys for the bus, through the OpenSSL that Python's own ``ssl`` already loaded.

pyca/cryptography carries an OpenSSL of its own, statically linked into an 8 MiB
extension: in the compute agent (which loads the system's libcrypto anyway, for pika's
``ssl``) that second copy was a sixth of the daemon's memory. OpenSSL >= 1.1.1 signs and
verifies Ed25519 itself (``EVP_DigestSign``/``EVP_DigestVerify`` with a raw key, the calls
cryptography makes too), so the bus binds those few functions with ctypes from the
libcrypto the interpreter has mapped. Where that library is missing or too old,
cryptography does the same job (``backend()`` says which one runs).

Key files are the standard forms (RFC 8410): PKCS#8 ``PRIVATE KEY`` and SubjectPublicKeyInfo
``PUBLIC KEY`` PEM, as ``openssl genpkey -algorithm ed25519`` and cryptography write them.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import os
import secrets
import threading
from typing import Any, Protocol

#: DER prefixes of an Ed25519 key (RFC 8410): PKCS#8 v1 private key, SubjectPublicKeyInfo.
_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_NID_ED25519 = 1087
SEED_SIZE = 32
PUBLIC_SIZE = 32
SIGNATURE_SIZE = 64

#: ``NOVACONSOLE_ED25519=cryptography`` forces the fallback (tests compare the two).
BACKEND_ENV = "NOVACONSOLE_ED25519"


class KeyFormatError(ValueError):
    """The bytes are not an Ed25519 key in the expected form."""


class InvalidSignature(Exception):
    """The signature does not verify against this public key."""


class PrivateKey(Protocol):
    def sign(self, data: bytes) -> bytes: ...
    def public_key(self) -> PublicKey: ...
    def seed(self) -> bytes: ...


class PublicKey(Protocol):
    def verify(self, signature: bytes, data: bytes) -> None: ...
    def raw(self) -> bytes: ...


# -- PEM ---------------------------------------------------------------------------------


def _pem_body(pem: bytes, label: str) -> bytes:
    text = pem.decode("ascii", "replace").strip()
    begin, end = f"-----BEGIN {label}-----", f"-----END {label}-----"
    if not text.startswith(begin) or not text.endswith(end):
        raise KeyFormatError(f"not a PEM {label.lower()} (-----BEGIN {label}-----)")
    body = "".join(text[len(begin) : -len(end)].split())
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise KeyFormatError(f"PEM {label}: bad base64") from exc


def _pem(label: str, der: bytes) -> str:
    body = base64.b64encode(der).decode("ascii")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "\n".join([f"-----BEGIN {label}-----", *lines, f"-----END {label}-----", ""])


def seed_from_pem(pem: bytes) -> bytes:
    """The 32-byte seed of an unencrypted PKCS#8 Ed25519 ``PRIVATE KEY``."""
    if b"ENCRYPTED" in pem[:64]:
        raise KeyFormatError("an encrypted private key (an unencrypted one is needed)")
    der = _pem_body(pem, "PRIVATE KEY")
    if len(der) == len(_PKCS8_PREFIX) + SEED_SIZE and der.startswith(_PKCS8_PREFIX):
        return der[len(_PKCS8_PREFIX) :]
    # Other valid encodings (PKCS#8 v2 with the public key attached): cryptography's parser.
    return _cryptography_seed(pem)


def public_from_pem(pem: bytes) -> bytes:
    """The 32 raw bytes of an Ed25519 SubjectPublicKeyInfo ``PUBLIC KEY``."""
    der = _pem_body(pem, "PUBLIC KEY")
    if len(der) != len(_SPKI_PREFIX) + PUBLIC_SIZE or not der.startswith(_SPKI_PREFIX):
        raise KeyFormatError("not an Ed25519 public key")
    return der[len(_SPKI_PREFIX) :]


def private_pem(seed: bytes) -> str:
    return _pem("PRIVATE KEY", _PKCS8_PREFIX + seed)


def public_pem(raw: bytes) -> str:
    return _pem("PUBLIC KEY", _SPKI_PREFIX + raw)


def _cryptography_seed(pem: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError("not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFormatError("not an Ed25519 key")
    return key.private_bytes_raw()


# -- OpenSSL through ctypes --------------------------------------------------------------


def _mapped_libcrypto() -> str | None:
    """The path of the libcrypto this process already has mapped (Python's hashlib/ssl)."""
    try:
        import _hashlib  # noqa: F401 - links the interpreter's libcrypto, if it has one
    except ImportError:
        return None
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if "/libcrypto.so" in path and os.path.exists(path):
                    return path
    except OSError:
        return None
    return None


class _LibCrypto:
    """The handful of libcrypto functions Ed25519 needs, typed for ctypes."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        vp, sz, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
        psz = ctypes.POINTER(ctypes.c_size_t)
        self.new_private = self._fn(lib.EVP_PKEY_new_raw_private_key, vp, ctypes.c_int, vp, cp, sz)
        self.new_public = self._fn(lib.EVP_PKEY_new_raw_public_key, vp, ctypes.c_int, vp, cp, sz)
        self.get_public = self._fn(lib.EVP_PKEY_get_raw_public_key, ctypes.c_int, vp, cp, psz)
        self.pkey_free = self._fn(lib.EVP_PKEY_free, None, vp)
        self.ctx_new = self._fn(lib.EVP_MD_CTX_new, vp)
        self.ctx_free = self._fn(lib.EVP_MD_CTX_free, None, vp)
        init = (ctypes.c_int, vp, vp, vp, vp, vp)
        self.sign_init = self._fn(lib.EVP_DigestSignInit, *init)
        self.verify_init = self._fn(lib.EVP_DigestVerifyInit, *init)
        self.sign = self._fn(lib.EVP_DigestSign, ctypes.c_int, vp, cp, psz, cp, sz)
        self.verify = self._fn(lib.EVP_DigestVerify, ctypes.c_int, vp, cp, sz, cp, sz)
        self.clear_errors = self._fn(lib.ERR_clear_error, None)

    @staticmethod
    def _fn(fn: Any, restype: Any, *argtypes: Any) -> Any:
        fn.restype = restype
        fn.argtypes = list(argtypes)
        return fn

    def pkey(self, private: bool, raw: bytes) -> int:
        make = self.new_private if private else self.new_public
        handle = make(_NID_ED25519, None, raw, len(raw))
        if not handle:
            self.clear_errors()
            raise KeyFormatError("OpenSSL refused the Ed25519 key")
        return int(handle)


class _OpenSSLPublicKey:
    def __init__(self, lib: _LibCrypto, raw: bytes) -> None:
        if len(raw) != PUBLIC_SIZE:
            raise KeyFormatError(f"an Ed25519 public key is {PUBLIC_SIZE} bytes")
        self._lib = lib
        self._raw = bytes(raw)
        self._handle = lib.pkey(False, self._raw)

    def raw(self) -> bytes:
        return self._raw

    def verify(self, signature: bytes, data: bytes) -> None:
        lib = self._lib
        if len(signature) != SIGNATURE_SIZE:
            raise InvalidSignature
        ctx = lib.ctx_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        try:
            ok = lib.verify_init(ctx, None, None, None, self._handle) == 1 and (
                lib.verify(ctx, signature, len(signature), data, len(data)) == 1
            )
        finally:
            lib.ctx_free(ctx)
        if not ok:
            lib.clear_errors()  # a bad signature leaves an error queued for this thread
            raise InvalidSignature

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.pkey_free(handle)


class _OpenSSLPrivateKey:
    def __init__(self, lib: _LibCrypto, seed: bytes) -> None:
        if len(seed) != SEED_SIZE:
            raise KeyFormatError(f"an Ed25519 private key is {SEED_SIZE} bytes")
        self._lib = lib
        self._seed = bytes(seed)
        self._handle = lib.pkey(True, self._seed)
        out = ctypes.create_string_buffer(PUBLIC_SIZE)
        size = ctypes.c_size_t(PUBLIC_SIZE)
        if lib.get_public(self._handle, out, ctypes.byref(size)) != 1 or size.value != PUBLIC_SIZE:
            lib.clear_errors()
            raise KeyFormatError("OpenSSL could not derive the public key")
        self._public = _OpenSSLPublicKey(lib, out.raw)

    def seed(self) -> bytes:
        return self._seed

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        lib = self._lib
        ctx = lib.ctx_new()
        if not ctx:
            raise MemoryError("EVP_MD_CTX_new")
        out = ctypes.create_string_buffer(SIGNATURE_SIZE)
        size = ctypes.c_size_t(SIGNATURE_SIZE)
        try:
            if (
                lib.sign_init(ctx, None, None, None, self._handle) != 1
                or lib.sign(ctx, out, ctypes.byref(size), data, len(data)) != 1
            ):
                lib.clear_errors()
                raise RuntimeError("OpenSSL failed to sign")
        finally:
            lib.ctx_free(ctx)
        return out.raw[: size.value]

    def __repr__(self) -> str:
        return "<Ed25519 private key>"

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle:
            self._lib.pkey_free(handle)


# -- cryptography, where there is no usable libcrypto -------------------------------------


class _CryptographyPublicKey:
    def __init__(self, raw: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if len(raw) != PUBLIC_SIZE:
            raise KeyFormatError(f"an Ed25519 public key is {PUBLIC_SIZE} bytes")
        self._raw = bytes(raw)
        self._key = Ed25519PublicKey.from_public_bytes(self._raw)

    def raw(self) -> bytes:
        return self._raw

    def verify(self, signature: bytes, data: bytes) -> None:
        from cryptography.exceptions import InvalidSignature as Invalid

        try:
            self._key.verify(signature, data)
        except Invalid:
            raise InvalidSignature from None


class _CryptographyPrivateKey:
    def __init__(self, seed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if len(seed) != SEED_SIZE:
            raise KeyFormatError(f"an Ed25519 private key is {SEED_SIZE} bytes")
        self._seed = bytes(seed)
        self._key = Ed25519PrivateKey.from_private_bytes(self._seed)
        self._public = _CryptographyPublicKey(self._key.public_key().public_bytes_raw())

    def seed(self) -> bytes:
        return self._seed

    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return "<Ed25519 private key>"


# -- choice ------------------------------------------------------------------------------

_lock = threading.Lock()
_chosen: tuple[str, _LibCrypto | None] | None = None


def _choose() -> tuple[str, _LibCrypto | None]:
    global _chosen
    with _lock:
        if _chosen is None:
            lib = None
            if os.environ.get(BACKEND_ENV, "") != "cryptography":
                path = _mapped_libcrypto()
                if path is not None:
                    try:
                        lib = _LibCrypto(path)
                        # OpenSSL < 1.1.1 lacks Ed25519: the key is refused here.
                        _OpenSSLPrivateKey(lib, bytes(SEED_SIZE)).sign(b"")
                    except (OSError, AttributeError, KeyFormatError, RuntimeError):
                        lib = None
            _chosen = ("openssl", lib) if lib is not None else ("cryptography", None)
        return _chosen


def backend() -> str:
    """``"openssl"`` (the interpreter's libcrypto) or ``"cryptography"``."""
    return _choose()[0]


def private_key(seed: bytes) -> PrivateKey:
    """The private key of a 32-byte seed."""
    _, lib = _choose()
    return _OpenSSLPrivateKey(lib, seed) if lib is not None else _CryptographyPrivateKey(seed)


def public_key(raw: bytes) -> PublicKey:
    """The public key of its 32 raw bytes."""
    _, lib = _choose()
    return _OpenSSLPublicKey(lib, raw) if lib is not None else _CryptographyPublicKey(raw)


def generate() -> PrivateKey:
    """A new private key (a seed from the OS's CSPRNG, as RFC 8032 asks)."""
    return private_key(secrets.token_bytes(SEED_SIZE))
