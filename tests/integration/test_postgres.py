"""The store on a real PostgreSQL server (Debian's postgresql, started for the test on loopback)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from guard.sandbox import GroundTruth


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found: `make test` installs Debian's postgresql package")
    return Path(found[-1]).parent


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    bin_dir = _pg_bin()
    # Not pytest's tmp_path: its parents are private to root, and the server runs as the postgres user.
    root = Path(tempfile.mkdtemp(prefix="vmguard-pg-"))
    os.chmod(root, 0o755)
    data = root / "data"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        user = pwd.getpwnam("postgres")
        shutil.chown(data, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "guard"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                    "-o", f"-h 127.0.0.1 -p {port} -k {data}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql://guard@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_scan_and_restart_on_postgres(team_account: GroundTruth, make_scanner, postgres_url: str) -> None:
    scanner = make_scanner(database_url=postgres_url)
    for region in ("us-east-1", "us-west-2"):
        assert scanner.scan(region).status == "ok"
    rows = scanner.store.findings()
    assert {(r.rule, r.region, r.resource_id) for r in rows} == set(team_account.expected())
    assert all(r.first_seen.tzinfo is not None for r in rows)
    first_seen = {r.id: r.first_seen for r in rows}
    scanner.store.close()

    again = make_scanner(database_url=postgres_url)
    assert again.scan("us-east-1").status == "ok"
    assert {r.id: r.first_seen for r in again.store.findings()} == first_seen
    assert len(again.store.scans()) == 3
    summary = again.store.open_summary()
    assert sum(count for *_, count, _, _ in summary) == len(team_account.expected())
