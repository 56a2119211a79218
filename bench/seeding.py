"""The account a scan benchmark runs against: N instances, half idle, and N/10 detached volumes, from a seed.

The emulator seeds it with ``guard.sandbox.seed_fleet`` (in its own process, so volumes can be backdated):
reservations of 10 instances (of 1 above 1,000 instances, see ``LARGE``) of five types and five owners, a 3-hour
CPU/NetworkIn/NetworkOut series per instance (every other instance idle: CPU 0.5-3 %, 0.1-2 MB/h; the rest busy:
CPU 30-90 %, 200-5,000 MB/h), put 1,000 datums a call, and detached gp2/gp3 volumes created 2-90 days ago. Values
come from a fixed random seed and ids from moto's id generator seeded with ``id_seed``: the same plan on a fresh
emulator gives the same account.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REGION = "us-east-1"
ID_SEED = 8008
PER_RESERVATION = 10
LARGE = 1000
"""Above this many instances, one instance per reservation: moto pages DescribeInstances by reservations (AWS by
instances), so 10,000 instances in reservations of 10 would come back as one page of 10,000 — ten times what AWS
returns for MaxResults=1000, and longer for the emulator to write than a client's read timeout."""


@dataclass(frozen=True)
class FleetPlan:
    instances: int
    region: str = REGION
    per_reservation: int = PER_RESERVATION
    id_seed: int = ID_SEED

    @classmethod
    def of(cls, instances: int) -> FleetPlan:
        """The plan of a benchmark of ``instances`` instances."""
        return cls(instances, per_reservation=PER_RESERVATION if instances <= LARGE else 1)

    @property
    def volumes(self) -> int:
        return self.instances // 10

    @property
    def reservations(self) -> int:
        return -(-self.instances // self.per_reservation)

    def seed_fleet_args(self) -> dict[str, Any]:
        """The emulator's ``seed_fleet`` command for this plan."""
        return {"region": self.region, "instances": self.instances, "volumes": self.volumes,
                "per_reservation": self.per_reservation, "with_metrics": True, "id_seed": self.id_seed}


@dataclass(frozen=True)
class Truth:
    """What an idle-VM and detached-volume check must find in a seeded fleet."""

    idle_instances: frozenset[str]
    detached_volumes: frozenset[str]

    @classmethod
    def of(cls, seeded: dict[str, list[str]]) -> Truth:
        return cls(frozenset(seeded["idle_ids"]), frozenset(seeded["volume_ids"]))
