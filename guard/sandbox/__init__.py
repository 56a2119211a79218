"""The sandbox: an emulated AWS account (moto in server mode, spoken to over HTTP), seeded with a team's waste.

The only part of vmguard that knows about the emulator. ``SandboxServer`` runs it on loopback with fake
credentials; ``seed_team_account`` fills it with a deterministic data-science team account and returns the
``GroundTruth`` the rules must find; ``seed_fleet`` makes a large plain account for scale tests. ``VmRunner`` is
the data plane: a local process per launched cluster VM, on the instance's own loopback address.
"""

from guard.sandbox.account import Fleet, make_busy, seed_fleet, seed_team_account
from guard.sandbox.live import LiveMetrics
from guard.sandbox.server import SandboxError, SandboxServer, sandbox_client
from guard.sandbox.truth import (
    ExpectedFinding,
    GroundTruth,
    InstanceSpec,
    NearMiss,
    SeedContext,
    Seeded,
    VolumeSpec,
)
from guard.sandbox.vms import VmProcess, VmRunner, create_env_location

__all__ = [
    "ExpectedFinding",
    "Fleet",
    "GroundTruth",
    "InstanceSpec",
    "LiveMetrics",
    "NearMiss",
    "SandboxError",
    "SandboxServer",
    "SeedContext",
    "Seeded",
    "VmProcess",
    "VmRunner",
    "VolumeSpec",
    "create_env_location",
    "make_busy",
    "sandbox_client",
    "seed_fleet",
    "seed_team_account",
]
