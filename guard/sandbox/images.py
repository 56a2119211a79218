"""The machine images of the sandbox account: Amazon Linux 2023 for x86_64 and for arm64.

Moto, like AWS, takes an instance's ``Architecture`` from the image it was launched from, so Graviton
types are launched from the arm64 image and report ``arm64``. The images are handed to moto as its AMI
catalog (``MOTO_AMIS_PATH``) instead of its ~1,300 built-in ones, which slow every region's start.
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
X86_64_IMAGE_ID = "ami-0453ec754f44f9a4a"
ARM64_IMAGE_ID = "ami-0c518311db5640eff"


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


IMAGES = (_image(X86_64_IMAGE_ID, "x86_64"), _image(ARM64_IMAGE_ID, "arm64"))

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
