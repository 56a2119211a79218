"""TLS for every cluster: a certificate authority per cluster, made on the client, and its keys delivered to the VMs
through a channel that expires.

The client makes a CA (its key never leaves this process and is dropped once the certificates are signed), a
certificate for the cluster's VMs and one for itself. Scheduler, workers and client then speak ``tls://`` with
``require_encryption`` and mutual authentication: a peer without a certificate of *this* cluster's CA is refused
(Dask's TLS requires a client certificate, ``CERT_REQUIRED``).

The VMs' key must not be in the user-data: that is readable through ``DescribeInstanceAttribute`` and by every
process on the VM. It goes into one SSE-encrypted S3 object (under the environment's location, ``env_s3``), which
the VMs fetch through a presigned GET URL valid for the boot window only; the client deletes the object once the
VMs are up (or when the boot window is over, or when the cluster closes, whichever comes first). The user-data
carries only that URL and the object's sha256, which the VM checks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sdk.environment.ship import S3_ENV, parse_location, presign, s3_client
from sdk.errors import SdkError

log = logging.getLogger(__name__)

CERT_MARGIN = timedelta(days=1)
"""Certificates outlive the cluster's ``max_lifetime`` by this much (clocks drift, VMs boot late)."""
FETCH_TIMEOUT_SECONDS = 120.0
"""How long a VM keeps trying to fetch its keys (the S3 object is written before the VM is launched)."""


@dataclass(frozen=True)
class ClusterTls:
    """One cluster's PEM material: the CA certificate, the VMs' certificate and key, the client's."""

    ca: str
    vm_cert: str
    vm_key: str
    client_cert: str
    client_key: str

    @classmethod
    def create(cls, cluster_id: str, max_lifetime: timedelta) -> ClusterTls:
        """A new CA for ``cluster_id`` and the two certificates it signs (ECDSA P-256), valid while it may live."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.now(timezone.utc) - timedelta(minutes=5)  # a VM whose clock is a little behind
        until = now + max_lifetime + CERT_MARGIN
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmguard {cluster_id} CA")])
        ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now).not_valid_after(until)
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))

        def leaf(role: str) -> tuple[str, str]:
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmguard {cluster_id} {role}")])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name)
                    .public_key(key.public_key()).serial_number(x509.random_serial_number())
                    .not_valid_before(now).not_valid_after(until)
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .sign(ca_key, hashes.SHA256()))
            return _pem_cert(cert), _pem_key(key)

        vm_cert, vm_key = leaf("vm")
        client_cert, client_key = leaf("client")
        return cls(ca=_pem_cert(ca), vm_cert=vm_cert, vm_key=vm_key, client_cert=client_cert, client_key=client_key)

    def client_security(self) -> Any:
        """The ``distributed.Security`` of the client: this cluster's CA, the client's certificate, TLS only."""
        from distributed.security import Security

        return Security(tls_ca_file=self.ca, tls_client_cert=self.client_cert, tls_client_key=self.client_key,
                        require_encryption=True)

    def vm_material(self) -> bytes:
        """What the VMs fetch: the CA certificate and the VMs' certificate and key, as JSON."""
        return json.dumps({"ca": self.ca, "cert": self.vm_cert, "key": self.vm_key}, sort_keys=True).encode()


def vm_security(material: dict[str, str]) -> Any:
    """The ``distributed.Security`` of a VM (scheduler and worker alike) from the material it fetched."""
    from distributed.security import Security

    ca, cert, key = material["ca"], material["cert"], material["key"]
    return Security(tls_ca_file=ca, tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
                    tls_worker_key=key, tls_client_cert=cert, tls_client_key=key, require_encryption=True)


def fetch_material(url: str, sha256: str, timeout: float = FETCH_TIMEOUT_SECONDS) -> dict[str, str]:
    """The VM's side: GET the presigned URL (retrying while the network comes up), check the sha256, parse."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:  # noqa: S310 - a presigned https URL
                body = reply.read()
            break
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                raise SdkError(f"could not fetch the cluster's TLS material within {timeout:.0f}s "
                               f"({type(exc).__name__}: {exc})") from None
        time.sleep(2)
    if hashlib.sha256(body).hexdigest() != sha256:
        raise SdkError("the cluster's TLS material does not match the sha256 of the user-data")
    try:
        material = json.loads(body)
    except ValueError:
        material = None
    if not isinstance(material, dict) or not {"ca", "cert", "key"} <= material.keys():
        raise SdkError("the cluster's TLS material is not JSON with ca, cert and key")
    return material


class KeyDrop:
    """The S3 object the VMs fetch their TLS material from: written before launch, deleted once they are up."""

    def __init__(self, s3: Any, bucket: str, key: str, url: str, sha256: str) -> None:
        self.s3, self.bucket, self.key, self.url, self.sha256 = s3, bucket, key, url, sha256
        self.deleted = False

    @classmethod
    def put(cls, tls: ClusterTls, *, cluster_id: str, location: str | None, expires: timedelta,
            kms_key_id: str | None = None) -> KeyDrop:
        """Write the VMs' material to ``location`` (``s3://bucket/prefix/``; default ``$VMGUARD_ENV_S3``), SSE
        encrypted, and presign a GET valid for ``expires``."""
        from botocore.exceptions import BotoCoreError, ClientError

        location = location or os.environ.get(S3_ENV)
        if not location:
            raise SdkError(f"the VMs fetch their TLS keys from S3, and no location is set: set {S3_ENV}="
                           "s3://your-team-bucket/vmguard/ (or pass env_s3=...)")
        bucket, prefix = parse_location(location)
        key = f"{prefix}tls-{cluster_id}.json"
        body = tls.vm_material()
        extra: dict[str, Any] = ({"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id} if kms_key_id
                                 else {"ServerSideEncryption": "AES256"})
        s3 = s3_client()
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", **extra)
            url = presign(s3, bucket, key, int(expires.total_seconds()))
        except (ClientError, BotoCoreError) as exc:
            raise SdkError(f"cannot write the cluster's TLS keys to s3://{bucket}/{key} ({_describe(exc)}); check "
                           f"{S3_ENV} and your s3:PutObject permission") from None
        return cls(s3, bucket, key, url, hashlib.sha256(body).hexdigest())

    def config(self) -> dict[str, str]:
        """What each VM's config carries: where to fetch the material, and its sha256."""
        return {"url": self.url, "sha256": self.sha256}

    def delete(self) -> None:
        """Delete the object (once; a failure is logged: the presigned URL expires anyway)."""
        if self.deleted:
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key)
            self.deleted = True
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not delete the TLS keys at s3://%s/%s (%s); the URL the VMs used expires anyway",
                        self.bucket, self.key, _describe(exc))


def _describe(exc: BaseException) -> str:
    error = getattr(exc, "response", {}).get("Error", {}) if hasattr(exc, "response") else {}
    return f"{error.get('Code')}: {error.get('Message', '')}" if error else f"{type(exc).__name__}: {exc}"


def _pem_cert(cert: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _pem_key(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
