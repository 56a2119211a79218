"""Ship: the bundle goes inline in the user-data when it is small, else to the team's S3 location.

S3 (``s3://bucket/prefix/``, from the ``location`` argument or ``VMGUARD_ENV_S3``): one object per bundle,
``<prefix>env-<sha256>.tar.gz``, encrypted at rest (SSE, ``AES256`` unless ``sse_kms_key_id`` is given), tagged
``guard:managed=true``, ``owner=<owner>`` and ``vmguard:env-hash=<sha256>``, and uploaded only when the bucket
does not have it yet (an unchanged environment is never uploaded twice). The prefix carries a lifecycle rule
that expires vmguard's objects ``EXPIRY_DAYS`` after their upload (an object still in use is uploaded again
before that), so nothing is left behind; the bucket's other rules are kept.

How a VM fetches it without a secret in its user-data: a **presigned GET URL** for that one object, valid for
``url_expires_seconds`` (by default twice the boot timeout: the scheduler boots, then the workers launch and boot
with the same URL). The URL can read that one object and nothing else, and stops working when it expires; it
carries no secret key, so nothing on the VM can sign another request with it. An instance profile would avoid
even that, but needs an IAM role the person launching may not be allowed to create; a presigned URL needs only
``s3:GetObject`` on the prefix for whoever launches. (A URL signed with temporary credentials ends with them,
whichever comes first.)
"""

from __future__ import annotations

import base64
import logging
import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlparse

from sdk.environment.bundle import Bundle
from sdk.environment.lock import python_platform
from sdk.errors import SdkError

log = logging.getLogger(__name__)

S3_ENV = "VMGUARD_ENV_S3"
INLINE_MAX_BYTES = 6 * 1024
"""A bundle up to this size goes in the user-data itself (8 KiB once base64-encoded, of EC2's 16 KiB)."""
EXPIRY_DAYS = 7
"""vmguard's objects under the prefix expire this many days after their upload."""
REFRESH_AFTER_DAYS = EXPIRY_DAYS - 2
"""An object older than this is uploaded again when used, so it never expires under a running cluster."""
LIFECYCLE_RULE_PREFIX = "vmguard-envs"
DEFAULT_BOOT_TIMEOUT_SECONDS = 600
_TAG_VALUE = re.compile(r"[^\w .:/=+\-@]")


@dataclass(frozen=True)
class EnvironmentRef:
    """Where the VMs get their environment: what goes, JSON-able, into each VM's config (``to_config``)."""

    hash: str
    """sha256 of the bundle: the VM checks what it fetched against it."""
    python: str
    """The Python minor the VMs create their venv with (uv fetches it if the image lacks it)."""
    arch: str
    uv: str
    """The uv version the VMs install."""
    size: int
    url: str | None = None
    """A presigned GET URL of the bundle in S3 (None when inline)."""
    s3_uri: str | None = None
    inline: bytes | None = None
    """The bundle itself, when small enough for the user-data."""
    reused: bool = False
    """The bundle came from the cache (nothing was resolved or built)."""
    uploaded: bool = False
    """This call uploaded it (False: inline, or S3 had it already)."""
    packages: dict[str, str] | None = None

    def to_config(self) -> dict[str, Any]:
        """The ``environment`` entry of the VM config (``sdk.bootstrap`` turns it into the install steps)."""
        config: dict[str, Any] = {"hash": self.hash, "python": self.python, "arch": self.arch,
                                  "platform": python_platform(self.arch), "uv": self.uv}
        if self.inline is not None:
            config["inline"] = base64.b64encode(self.inline).decode("ascii")
        else:
            config["url"] = self.url
        return config


def parse_location(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (``bucket``, ``some/prefix/``)."""
    parsed = urlparse(location)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SdkError(f"the environment's S3 location must look like s3://bucket/prefix/, not {location!r}")
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parsed.netloc, prefix


def ship(bundle: Bundle, *, owner: str, s3: Any = None, location: str | None = None,
         url_expires_seconds: int | None = None, inline_max_bytes: int = INLINE_MAX_BYTES,
         sse_kms_key_id: str | None = None) -> EnvironmentRef:
    """Inline when small, else S3 (see the module's doc): the reference the VMs' config carries."""
    base = EnvironmentRef(hash=bundle.hash, python=bundle.python, arch=bundle.arch, uv=bundle.uv, size=bundle.size,
                          reused=bundle.reused, packages=dict(bundle.packages))
    if bundle.size <= inline_max_bytes:
        return replace(base, inline=bundle.path.read_bytes())
    location = location or os.environ.get(S3_ENV)
    if not location:
        raise SdkError(f"this environment's bundle is {bundle.size // 1024} KiB, too large for the user-data: "
                       f"set {S3_ENV}=s3://your-team-bucket/vmguard-envs/ (or pass env_s3=...) so the VMs fetch it "
                       "from S3")
    bucket, prefix = parse_location(location)
    s3 = s3 or s3_client()
    key = f"{prefix}env-{bundle.hash}.tar.gz"
    uploaded = _upload(s3, bucket, key, bundle, owner, sse_kms_key_id)
    ensure_lifecycle(s3, bucket, prefix)
    expires = url_expires_seconds or 2 * DEFAULT_BOOT_TIMEOUT_SECONDS
    url = presign(s3, bucket, key, expires)
    return replace(base, url=url, s3_uri=f"s3://{bucket}/{key}", uploaded=uploaded)


def presign(s3: Any, bucket: str, key: str, expires_seconds: int) -> str:
    """A presigned GET of the bundle; ``s3`` should sign with SigV4 (``s3_client()``): SigV2 URLs, botocore's
    default in us-east-1, fail in newer regions."""
    return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                     ExpiresIn=int(expires_seconds))


def s3_client(region: str | None = None) -> Any:
    """A boto3 S3 client that presigns with SigV4 (the default credentials, region and endpoint)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", region_name=region, config=Config(signature_version="s3v4"))


def refresh_url(ref: EnvironmentRef, s3: Any, expires_seconds: int) -> EnvironmentRef:
    """The same reference with a new presigned URL (for VMs launched after the first URL's lifetime)."""
    if ref.s3_uri is None:
        return ref
    bucket, key = ref.s3_uri[len("s3://"):].split("/", 1)
    return replace(ref, url=presign(s3, bucket, key, expires_seconds))


def object_tags(owner: str, env_hash: str) -> dict[str, str]:
    return {"guard:managed": "true", "owner": _tag_value(owner), "vmguard:env-hash": env_hash}


def _tag_value(value: str) -> str:
    return _TAG_VALUE.sub("_", value)[:256]


def _upload(s3: Any, bucket: str, key: str, bundle: Bundle, owner: str, kms_key: str | None) -> bool:
    from botocore.exceptions import ClientError

    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("404", "NoSuchKey", "NotFound"):
            raise SdkError(f"cannot read s3://{bucket}/{key} to ship the environment: {code} "
                           f"({exc.response.get('Error', {}).get('Message', '')})") from exc
        head = None
    if head is not None:
        modified = head.get("LastModified")
        fresh = modified is None or (datetime.now(timezone.utc) - modified).days < REFRESH_AFTER_DAYS
        if fresh and head.get("ContentLength") == bundle.size:
            return False
    tagging = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in object_tags(owner, bundle.hash).items())
    extra: dict[str, Any] = {"ServerSideEncryption": "AES256"}
    if kms_key:
        extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key}
    try:
        with bundle.path.open("rb") as body:
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip", Tagging=tagging,
                          Metadata={"vmguard-env-hash": bundle.hash}, **extra)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SdkError(f"cannot upload the environment to s3://{bucket}/{key}: {error.get('Code')} "
                       f"({error.get('Message', '')}); check {S3_ENV} and your s3:PutObject permission") from exc
    return True


def lifecycle_rule(prefix: str, days: int = EXPIRY_DAYS) -> dict[str, Any]:
    """The rule that expires vmguard's bundles under ``prefix`` (only objects tagged ``guard:managed=true``)."""
    rule_id = f"{LIFECYCLE_RULE_PREFIX}:{prefix or '/'}"[:255]
    return {"ID": rule_id, "Status": "Enabled",
            "Filter": {"And": {"Prefix": prefix, "Tags": [{"Key": "guard:managed", "Value": "true"}]}},
            "Expiration": {"Days": days}}


def ensure_lifecycle(s3: Any, bucket: str, prefix: str, days: int = EXPIRY_DAYS) -> bool:
    """Add (or fix) the expiry rule of ``prefix``, keeping the bucket's other rules; True if it changed anything.

    Without the permission to read or write the bucket's lifecycle, a warning says what to ask for.
    """
    from botocore.exceptions import ClientError

    wanted = lifecycle_rule(prefix, days)
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code != "NoSuchLifecycleConfiguration":
            log.warning("cannot read the lifecycle rules of s3://%s (%s): make sure objects under %s expire "
                        "(rule %s), or they stay until deleted", bucket, code, prefix or "/", wanted["ID"])
            return False
        rules = []
    current = next((rule for rule in rules if rule.get("ID") == wanted["ID"]), None)
    if current is not None and current.get("Expiration") == wanted["Expiration"] and current.get("Status") == "Enabled":
        return False
    rules = [rule for rule in rules if rule.get("ID") != wanted["ID"]] + [wanted]
    try:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        log.warning("cannot set the lifecycle rule %s on s3://%s (%s): objects under %s stay until deleted; ask "
                    "for s3:PutLifecycleConfiguration or add the rule yourself", wanted["ID"], bucket, code,
                    prefix or "/")
        return False
    return True
