"""A cluster on a real account's terms, in the sandbox (real Dask processes, real TLS, STS credentials from the
emulator): only this client's certificate gets in; the VMs' keys are never in the user-data and are deleted from S3
once the VMs are up; the workers read the team's private data with the client's forwarded, expiring credentials."""

from __future__ import annotations

import base64
import io
import socket
import ssl
import time
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError
from distributed import Client
from polling import wait_for
from rich.console import Console

import sdk
from guard.sandbox import SandboxServer, VmRunner, sandbox_client
from sdk.errors import SdkError
from sdk.forwarding import CredentialForwarder
from sdk.security import ClusterTls

REGION = "us-east-1"
VM_TYPE = "m5.large"


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def refused(address: str, **kwargs) -> bool:
    """Whether a Dask client cannot connect to ``address`` (with these security arguments)."""
    try:
        with Client(address, timeout=5, set_as_default=False, **kwargs) as client:
            client.submit(sum, [1, 2]).result(timeout=5)
    except (OSError, TimeoutError, ValueError):
        return True
    return False


def tls_without_certificate_refused(host_port: str) -> bool:
    """Whether the scheduler ends a TLS session whose client shows no certificate (before it reads a message)."""
    host, port = host_port.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(b"\x00" * 16)
            return tls.recv(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_only_the_clusters_own_certificate_connects_and_no_key_is_in_the_user_data(
        runner: VmRunner, sdk_env: dict[str, str]) -> None:
    with sdk.Cluster(vm_type=VM_TYPE, region=REGION, n_workers=1, keepalive="2 minutes", console=quiet(),
                     environment=False) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://")
        host_port = address.removeprefix("tls://")
        assert cluster.get_client().submit(sum, [1, 2]).result(timeout=30) == 3

        assert refused(f"tcp://{host_port}")
        assert tls_without_certificate_refused(host_port)
        other = ClusterTls.create("vmg-someoneelse", timedelta(hours=1))
        assert refused(address, security=other.client_security())

        ec2 = sandbox_client(sdk_env["AWS_ENDPOINT_URL"], "ec2", REGION)
        for instance_id in cluster.launched.instance_ids:
            encoded = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
            script = base64.b64decode(encoded["UserData"]["Value"]).decode()
            assert "PRIVATE KEY" not in script and "BEGIN" not in script
            assert cluster._tls.vm_key.splitlines()[1] not in script
            assert "AWS_SECRET_ACCESS_KEY" not in script and "SessionToken" not in script

        # the VMs are up: their keys are gone from S3, and the presigned URL of the user-data reads nothing
        s3 = sandbox_client(sdk_env["AWS_ENDPOINT_URL"], "s3", REGION)
        keys = cluster._keys

        def gone() -> bool:
            try:
                s3.head_object(Bucket=keys.bucket, Key=keys.key)
            except ClientError:
                return True
            return False

        wait_for(gone, 60, "the VMs' TLS keys to be deleted from S3")
        assert httpx.get(keys.url).status_code == 404


def test_workers_read_private_data_with_forwarded_credentials_that_expire_and_are_renewed(
        sandbox: SandboxServer, runner: VmRunner, sdk_env: dict[str, str]) -> None:
    def read_object(bucket: str, key: str) -> bytes:  # defined here: pickled by value, the VMs cannot import tests
        import boto3 as vm_boto3

        return vm_boto3.client("s3", region_name="us-east-1").get_object(Bucket=bucket, Key=key)["Body"].read()

    def credentials_seen() -> dict[str, str | None]:
        import os as vm_os

        return {name: vm_os.environ.get(name) for name in ("AWS_ACCESS_KEY_ID", "AWS_CREDENTIAL_EXPIRATION",
                                                           "VMGUARD_TEST_SETTING")}

    bucket, key = f"team-data-{uuid.uuid4().hex[:8]}", "private/part-0.parquet"
    s3 = sandbox_client(sdk_env["AWS_ENDPOINT_URL"], "s3", REGION)
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=key, Body=b"the team's data")
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    environ = {"AWS_ENDPOINT_URL": sandbox.endpoint_url, "VMGUARD_TEST_SETTING": "forwarded"}
    with sdk.Cluster(vm_type=VM_TYPE, region=REGION, n_workers=2, keepalive="2 minutes", console=quiet(),
                     environment=False, environ=environ) as cluster:
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=60)
        assert client.submit(read_object, bucket, key, pure=False).result(timeout=30) == b"the team's data"

        # the VMs have no credentials of their own: the scheduler, which gets none forwarded, cannot read it
        assert client.run_on_scheduler(credentials_seen)["AWS_ACCESS_KEY_ID"] is None
        with pytest.raises(Exception, match="credentials"):
            client.run_on_scheduler(read_object, bucket, key)

        seen = client.run(credentials_seen)
        assert len(seen) == 2
        now = datetime.now(timezone.utc)
        for values in seen.values():
            assert values["VMGUARD_TEST_SETTING"] == "forwarded"
            expires = datetime.strptime(values["AWS_CREDENTIAL_EXPIRATION"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=timezone.utc)
            assert now < expires <= now + timedelta(hours=1, minutes=1)

        # renewed before they expire: a forwarder renewing 3 s after each minting, on the cluster's own client
        cluster._credentials.stop()
        forwarder = CredentialForwarder(client, boto3.Session(), renew_before=timedelta(minutes=59, seconds=57))
        forwarder.start()
        try:
            first = {values["AWS_CREDENTIAL_EXPIRATION"] for values in seen.values()}
            wait_for(lambda: forwarder.renewals >= 2, 60, "two renewals")
            time.sleep(1)
            later = {values["AWS_CREDENTIAL_EXPIRATION"] for values in client.run(credentials_seen).values()}
            assert len(later) == 1 and later.isdisjoint(first)
            assert max(later) > max(first)
            assert client.submit(read_object, bucket, key, pure=False).result(timeout=30) == b"the team's data"
        finally:
            forwarder.stop()


def test_a_missing_instance_profile_is_one_line_before_anything_launches(sandbox: SandboxServer, runner: VmRunner,
                                                                         sdk_env: dict[str, str]) -> None:
    sandbox.clear_requests()
    with pytest.raises(SdkError, match=r"^instance_profile='no-such-profile' does not exist in this account; create"):
        sdk.Cluster(vm_type=VM_TYPE, region=REGION, instance_profile="no-such-profile", console=quiet(),
                    environment=False)
    assert not [r.operation for r in sandbox.requests()
                if r.operation in ("RunInstances", "CreateSecurityGroup") or r.operation.startswith("PUT /")]
