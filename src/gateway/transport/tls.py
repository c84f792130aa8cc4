"""TLS for the gRPC and HTTP listeners, certificates reloaded when their files change.

Certificates are replaced on disk the way Kubernetes replaces a mounted secret (a rename), and
the next connections get the new ones without a restart: gRPC asks for its configuration as
each connection is accepted (`grpc.dynamic_ssl_server_credentials`), and the HTTP listener's
SSL context is reloaded in place within a second of the change. Files that cannot be read at
start stop start-up naming the setting; later, a bad replacement is logged and the last good
certificate stays.

With `client_ca_file` the listener requires a client certificate signed by that CA (mutual
TLS); what the certificate says (its SAN DNS names, its CN) becomes the call's `PeerIdentity`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
import structlog

from gateway.config import TlsSettings
from gateway.core.context import PeerIdentity
from gateway.errors import ConfigError
from gateway.watched_files import file_signature, reload_on_change

__all__ = [
    "CertificateFiles",
    "HttpTls",
    "grpc_credentials",
    "peer_identity_from_auth_context",
    "peer_identity_from_certificate",
]

log = structlog.get_logger(logger_name="gateway.tls")


class CertificateFiles:
    """A listener's certificate, key and (optional) client CA files, and whether they changed."""

    def __init__(self, setting: str, tls: TlsSettings) -> None:
        """`setting`: where they are configured (grpc.tls), for messages."""
        self.setting = setting
        self.paths = {"cert_file": tls.cert_file, "key_file": tls.key_file}
        if tls.client_ca_file:
            self.paths["client_ca_file"] = tls.client_ca_file
        self._seen: tuple[tuple[int, int, int] | None, ...] = ()

    @property
    def mutual(self) -> bool:
        return "client_ca_file" in self.paths

    def read(self) -> dict[str, bytes]:
        """Each file's bytes, by setting name; ConfigError naming the one that cannot be read."""
        contents = {}
        for name, path in self.paths.items():
            try:
                with open(path, "rb") as file:
                    contents[name] = file.read()
            except OSError as exc:
                raise ConfigError(
                    f"{self.setting}.{name}: cannot read {path}: {exc.strerror}"
                ) from None
        self._seen = file_signature(self.paths.values())
        return contents

    def changed(self) -> bool:
        """Whether any file was replaced or rewritten since the last read."""
        return file_signature(self.paths.values()) != self._seen


def grpc_credentials(files: CertificateFiles) -> grpc.ServerCredentials:
    """Server credentials that pick up new certificate files at the next accepted connection."""
    initial = _grpc_configuration(files.read())

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # Called by grpc (on one of its threads) as a connection is accepted: a stat of each
        # file, and a read only when one changed.
        if not files.changed():
            return None
        try:
            configuration = _grpc_configuration(files.read())
        except (ConfigError, ValueError) as exc:
            log.warning("kept the last good certificate", setting=files.setting, error=str(exc))
            return None
        log.info("loaded a new certificate", setting=files.setting)
        return configuration

    return grpc.dynamic_ssl_server_credentials(
        initial,
        fetch,  # type: ignore[arg-type]  # grpc-stubs omit that None means "no change"
        require_client_authentication=files.mutual,
    )


def _grpc_configuration(contents: Mapping[str, bytes]) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration(
        [(contents["key_file"], contents["cert_file"])],
        root_certificates=contents.get("client_ca_file"),
    )


class HttpTls:
    """The HTTP listener's SSL context, reloaded in place when its files change."""

    def __init__(self, files: CertificateFiles) -> None:
        self._files = files
        # No system CAs: with mutual TLS only client_ca_file's certificates are trusted.
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load()
        if files.mutual:
            self.context.verify_mode = ssl.CERT_REQUIRED
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._watcher = asyncio.create_task(
            reload_on_change(self._files.changed, self._reload),
            name=f"{self._files.setting} watcher",
        )

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher

    def _load(self) -> None:
        """The files into the context: new handshakes use them, open connections keep theirs."""
        self._files.read()  # ConfigError naming the setting when one cannot be read
        paths = self._files.paths
        try:
            self.context.load_cert_chain(paths["cert_file"], paths["key_file"])
            if "client_ca_file" in paths:
                self.context.load_verify_locations(paths["client_ca_file"])
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{self._files.setting}: cannot use the certificate: {exc}") from None

    def _reload(self) -> None:
        """The files again, after a change; a bad replacement leaves the last good one."""
        try:
            self._load()
        except ConfigError as exc:
            log.warning("kept the last good certificate", error=str(exc))
        else:
            log.info("loaded a new certificate", setting=self._files.setting)


def peer_identity_from_auth_context(auth: Mapping[str, Iterable[bytes]]) -> PeerIdentity | None:
    """What a gRPC client's verified certificate says (grpc's auth context), if it sent one."""
    if "x509_pem_cert" not in auth:
        return None
    # peer_dns: the SAN DNS names only. Not x509_subject_alternative_name, which lists the
    # email, URI and IP SANs too: a certificate naming a client's identity as an email or a
    # URI would be that client.
    names = tuple(v.decode() for v in auth.get("peer_dns", ()))
    # grpc gives an empty x509_common_name to a certificate without a CN.
    common = [v.decode() for v in auth.get("x509_common_name", ()) if v]
    return PeerIdentity(dns_names=names, common_name=common[0] if common else None)


def peer_identity_from_certificate(certificate: Mapping[str, Any] | None) -> PeerIdentity | None:
    """What an HTTP client's verified certificate says (ssl's getpeercert()), if it sent one."""
    if not certificate:
        return None
    names = tuple(value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS")
    common = [
        value
        for relative in certificate.get("subject", ())
        for key, value in relative
        if key == "commonName"
    ]
    return PeerIdentity(dns_names=names, common_name=common[0] if common else None)
