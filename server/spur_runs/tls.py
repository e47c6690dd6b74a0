"""TLS for the gRPC port (and the same files for the HTTP port).

The files are read once, at start-up, and checked with the standard `ssl`
module first: grpc itself would only log a cryptic handshake failure per
connection for a key that does not match its certificate, while this gives
one line and exit code 2.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import grpc

from .config import Config, ConfigError


@dataclass(frozen=True)
class TlsFiles:
    cert_chain: bytes
    key: bytes = b""
    client_ca: bytes | None = None

    def __repr__(self) -> str:  # never print a private key
        return f"TlsFiles(mutual={self.client_ca is not None})"


def _read(path: str, setting: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ConfigError(f"cannot read the file: {error.strerror or error}", setting) from None


def load(config: Config) -> TlsFiles | None:
    """The certificate, key and client CA of `config`, checked; None without TLS."""
    if not config.tls_cert or not config.tls_key:
        return None
    files = TlsFiles(
        cert_chain=_read(config.tls_cert, "tls_cert"),
        key=_read(config.tls_key, "tls_key"),
        client_ca=_read(config.tls_client_ca, "tls_client_ca") if config.tls_client_ca else None,
    )
    # Load them into an SSLContext to validate: bad PEM, a key that is not
    # the certificate's, an empty CA file all fail here with a reason.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key, password=_no_passphrase)
    except _Encrypted:
        raise ConfigError(
            "the private key is encrypted, and grpc takes no passphrase: give it decrypted "
            "(openssl pkey -in KEY -out PLAIN), readable by this user alone",
            "tls_key",
        ) from None
    except (ssl.SSLError, ValueError) as error:
        raise ConfigError(
            f"not a PEM certificate and its private key ({_reason(error)})", "tls_cert", "tls_key"
        ) from None
    if config.tls_client_ca:
        try:
            context.load_verify_locations(cafile=config.tls_client_ca)
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(
                f"the file holds no PEM certificate ({_reason(error)})", "tls_client_ca"
            ) from None
    return files


class _Encrypted(Exception):
    pass


def _no_passphrase() -> str:
    """Called only for an encrypted key. Without it OpenSSL asked for the
    passphrase on the terminal ("Enter PEM pass phrase:"), and without a
    terminal the start-up stopped with "[Errno 22] Invalid argument"."""
    raise _Encrypted


def _reason(error: Exception) -> str:
    if isinstance(error, ssl.SSLError) and error.reason:
        return str(error.reason)
    return str(error) or error.__class__.__name__


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(files.key, files.cert_chain)],
        root_certificates=files.client_ca,
        # Mutual TLS: the handshake fails for a client without a certificate
        # signed by the CA, before any call (or token) is looked at.
        require_client_auth=files.client_ca is not None,
    )


def http_context(config: Config) -> ssl.SSLContext | None:
    """An SSLContext with the same certificate and client CA, for the HTTP
    port (the gateway wraps its listening socket with it); None without TLS."""
    if load(config) is None:
        return None
    assert config.tls_cert and config.tls_key
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        context.load_verify_locations(cafile=config.tls_client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
