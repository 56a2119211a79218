"""The least-privilege IAM policy for a data scientist who launches clusters with the SDK (``guard iam-policy
--sdk``): every call ``sdk.Cluster`` makes, and no more.

Reads are allowed everywhere (they change nothing); what mutates is narrowed: instances and volumes may only be
created carrying ``guard:managed=true``, tags only written as part of the call that creates the resource, and
instances and security groups only terminated or deleted when they carry ``guard:managed=true``. The environment
and TLS objects are read and written under the S3 location only (``VMGUARD_ENV_S3``).
"""

from __future__ import annotations

from sdk.environment.ship import parse_location

MANAGED = {"Key": "guard:managed", "Value": "true"}
READS = (
    "ec2:DescribeImages", "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes", "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroups", "ec2:DescribeSubnets", "ec2:DescribeVpcs", "ec2:GetConsoleOutput",
    "servicequotas:GetServiceQuota", "ssm:GetParameter", "iam:GetInstanceProfile",
)
"""What the SDK reads before and while it launches: types, offerings, images (and the Deep Learning AMI's public
SSM parameter), the network, quotas, the instance profile it was given, and a failed VM's console."""
NO_PERMISSION_NEEDED = frozenset({"sts:GetCallerIdentity", "sts:GetSessionToken"})
"""STS calls every principal may make: the SDK mints the workers' session with ``GetSessionToken``."""


def sdk_policy(location: str | None = None) -> dict:
    """The policy; ``location`` (``s3://bucket/prefix/``) narrows the S3 statements to it (default: any bucket's
    ``vmguard-envs/`` prefix)."""
    bucket, prefix = parse_location(location) if location else ("*", "vmguard-envs/")
    managed = {"StringEquals": {f"aws:ResourceTag/{MANAGED['Key']}": MANAGED["Value"]}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "VmguardSdkRead", "Effect": "Allow", "Action": sorted(READS), "Resource": "*"},
        {"Sid": "VmguardSdkLaunchManaged", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*:*:volume/*"],
         "Condition": {"StringEquals": {f"aws:RequestTag/{MANAGED['Key']}": MANAGED["Value"]}}},
        {"Sid": "VmguardSdkLaunchInto", "Effect": "Allow", "Action": ["ec2:RunInstances"],
         "Resource": ["arn:aws:ec2:*::image/*", "arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*:*:subnet/*",
                      "arn:aws:ec2:*:*:network-interface/*", "arn:aws:ec2:*:*:security-group/*",
                      "arn:aws:ec2:*:*:spot-instances-request/*"]},
        {"Sid": "VmguardSdkClusterGroup", "Effect": "Allow",
         "Action": ["ec2:CreateSecurityGroup"], "Resource": "*"},
        {"Sid": "VmguardSdkTagOnCreate", "Effect": "Allow", "Action": ["ec2:CreateTags"], "Resource": "*",
         "Condition": {"StringEquals": {"ec2:CreateAction": ["RunInstances", "CreateSecurityGroup"]}}},
        {"Sid": "VmguardSdkEndManaged", "Effect": "Allow",
         "Action": ["ec2:AuthorizeSecurityGroupIngress", "ec2:DeleteSecurityGroup", "ec2:TerminateInstances"],
         "Resource": "*", "Condition": managed},
        {"Sid": "VmguardSdkInstanceRole", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": "*",
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
        {"Sid": "VmguardSdkEnvironmentObjects", "Effect": "Allow",
         "Action": ["s3:DeleteObject", "s3:GetObject", "s3:PutObject", "s3:PutObjectTagging"],
         "Resource": f"arn:aws:s3:::{bucket}/{prefix}*"},
        {"Sid": "VmguardSdkEnvironmentLifecycle", "Effect": "Allow",
         "Action": ["s3:GetLifecycleConfiguration", "s3:PutLifecycleConfiguration"],
         "Resource": f"arn:aws:s3:::{bucket}"},
    ]}


def allowed_actions(policy: dict) -> set[str]:
    """Every action some statement of ``policy`` allows."""
    return {action for statement in policy["Statement"] if statement["Effect"] == "Allow"
            for action in statement["Action"]}
