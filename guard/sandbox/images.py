"""The machine images of the sandbox account: Amazon Linux 2023 and the Deep Learning Base AMI with the NVIDIA
driver (Amazon Linux 2023), each for x86_64 and for arm64.

Moto, like AWS, takes an instance's ``Architecture`` from the image it was launched from, so Graviton
types are launched from the arm64 image and report ``arm64``. The images are handed to moto as its AMI
catalog (``MOTO_AMIS_PATH``) instead of its ~1,300 built-in ones, which slow every region's start; moto
registers the catalog in every region under the same ids.

AWS publishes the newest Deep Learning Base AMI of each region as a public SSM parameter, which the SDK reads
to boot GPU types; moto knows none of them and refuses ``PutParameter`` under ``/aws/``, so
``seed_image_parameters`` puts them in its SSM backend directly, in every region (again after each reset).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from guard.pricing import default_catalog

AMAZON_OWNER_ID = "137112412989"
DLAMI_OWNER_ID = "898082745236"
X86_64_IMAGE_ID = "ami-0453ec754f44f9a4a"
ARM64_IMAGE_ID = "ami-0c518311db5640eff"
DLAMI_IMAGE_IDS = {"x86_64": "ami-0b7c5e1d9e2f4a3c1", "arm64": "ami-0e4a9c2b7d1f6e8a5"}
"""The Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023), by architecture."""
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/{arch}/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id"
"""AWS's public SSM parameter naming the newest of those images in a region (the same name as ``sdk.launch``'s)."""


def _image(image_id: str, arch: str) -> dict[str, object]:
    name = f"al2023-ami-2023.6.20241212.0-kernel-6.1-{arch}"
    return {
        "ami_id": image_id,
        "name": name,
        "description": f"Amazon Linux 2023 AMI 2023.6.20241212.0 {arch} HVM kernel-6.1",
        "image_location": f"amazon/{name}",
        "architecture": arch,
        "owner_id": AMAZON_OWNER_ID,
        "public": True,
        "platform": None,
        "state": "available",
        "image_type": "machine",
        "hypervisor": "xen",
        "virtualization_type": "hvm",
        "root_device_name": "/dev/xvda",
        "root_device_type": "ebs",
        "sriov": "simple",
    }


def _dlami(image_id: str, arch: str) -> dict[str, object]:
    """A Deep Learning Base AMI as AWS names it: the ARM64 one says so in its name."""
    flavour = "ARM64 Base" if arch == "arm64" else "Base"
    name = f"Deep Learning {flavour} OSS Nvidia Driver GPU AMI (Amazon Linux 2023) 20241215"
    return {**_image(image_id, arch), "name": name, "description": f"{name}, NVIDIA driver 560.35.03, {arch}",
            "image_location": f"amazon/{name}", "owner_id": DLAMI_OWNER_ID}


IMAGES = (_image(X86_64_IMAGE_ID, "x86_64"), _image(ARM64_IMAGE_ID, "arm64"),
          *(_dlami(image_id, arch) for arch, image_id in DLAMI_IMAGE_IDS.items()))

_GRAVITON = re.compile(r"^[a-z]+\d+g")
"""Graviton families: a letter family, a generation, then ``g`` (m7g, c7gn, r8gd, g5g)."""


def architecture(instance_type: str) -> str:
    """The catalog's architecture for a type, or the Graviton naming rule for a type it does not know."""
    info = default_catalog().info(instance_type)
    if info is not None:
        return info.arch
    return "arm64" if _GRAVITON.match(instance_type) else "x86_64"


def image_for(instance_type: str) -> str:
    """The image id to launch a type from."""
    return ARM64_IMAGE_ID if architecture(instance_type) == "arm64" else X86_64_IMAGE_ID


def image_catalog_path() -> Path:
    """The images as a JSON file for ``MOTO_AMIS_PATH``; named by content, so written once per content."""
    text = json.dumps(IMAGES, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"vmguard-sandbox-images-{digest}.json"
    if not path.exists():
        partial = path.with_name(f"{path.name}.{os.getpid()}")
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    return path


def seed_image_parameters() -> None:
    """The DLAMI parameters in every region moto knows, in its SSM backend (this process's emulator only)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import utcnow
    from moto.ssm.models import Parameter, ssm_backends

    account = ssm_backends[DEFAULT_ACCOUNT_ID]
    for region in account.regions:
        parameters = account[region]._parameters
        for arch, image_id in DLAMI_IMAGE_IDS.items():
            name = DLAMI_PARAMETER.format(arch=arch)
            if parameters[name]:
                continue
            parameters[name].append(Parameter(
                account_id=DEFAULT_ACCOUNT_ID, name=name, value=image_id, parameter_type="String",
                description=None, allowed_pattern=None, keyid=None, last_modified_date=utcnow(), version=1,
                data_type="aws:ec2:image"))
