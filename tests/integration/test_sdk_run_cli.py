"""``vmguard run -- <command>`` in the sandbox: the command runs on a launched VM with the working directory's code,
its output comes back as it is printed, its exit code is the process's, and nothing is left running after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from guard.sandbox import VmRunner, sandbox_client

REGION = "us-east-1"
VMGUARD = [sys.executable, "-m", "sdk", "run", "--vm-type", "m5.large", "--region", REGION, "--keepalive", "2m",
           "--no-environment"]
"""Without environment replication a sandbox VM runs this interpreter: the launch takes seconds."""


def vmguard(*command: str, cwd: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k != "VMGUARD_DAEMON_URL"} | env
    return subprocess.Popen([*VMGUARD, *command], cwd=cwd, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def assert_nothing_left(runner: VmRunner) -> None:
    ec2 = sandbox_client(os.environ["AWS_ENDPOINT_URL"], "ec2", REGION)
    managed = [{"Name": "tag-key", "Values": ["vmguard:cluster"]}]
    live = ec2.describe_instances(Filters=[*managed, {"Name": "instance-state-name", "Values": ["pending", "running"]}])
    assert not live["Reservations"]
    assert not ec2.describe_security_groups(Filters=managed)["SecurityGroups"]
    deadline = time.monotonic() + 15
    while any(p.alive for p in runner.processes().values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(p.alive for p in runner.processes().values())


def test_a_command_prints_on_the_vm_exits_zero_and_leaves_nothing(runner: VmRunner, sdk_env: dict[str, str],
                                                                  tmp_path: Path) -> None:
    process = vmguard("python", "-c", "print(1+1)", cwd=tmp_path, env=sdk_env)
    stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    assert stdout == "2\n", stderr
    assert "about $" in stderr and "shut down" in stderr  # vmguard's own lines go to stderr
    assert_nothing_left(runner)


TRAIN = textwrap.dedent("""
    import os, sys, time
    from helpers import greeting
    print(greeting(), os.environ["RUN_NAME"], flush=True)
    print("warming up", file=sys.stderr, flush=True)
    while not os.path.exists(sys.argv[1]):  # the test lets the script go on once it saw the first line
        time.sleep(0.1)
    print("done")
    sys.exit(3)
""")


def test_the_working_directorys_code_runs_its_output_streams_and_its_exit_code_comes_back(
        runner: VmRunner, sdk_env: dict[str, str], tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    (project / "helpers.py").write_text("def greeting():\n    return 'hello from'\n")
    go = tmp_path / "go"
    process = vmguard("--env", "RUN_NAME=exp-7", "--", "python", "train.py", str(go), cwd=project, env=sdk_env)
    try:
        assert process.stdout.readline() == "hello from exp-7\n"  # printed while the command still runs
        go.touch()
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 3, stderr
    assert stdout == "done\n"
    assert "warming up\n" in stderr
    assert_nothing_left(runner)


def test_a_missing_command_is_127_and_a_bad_option_is_one_line_and_2(runner: VmRunner, sdk_env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    process = vmguard("no-such-command-here", cwd=tmp_path, env=sdk_env)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 127 and "no-such-command-here: command not found on the VM" in stderr
    bad = vmguard("--spot-policy", "spto", "--", "true", cwd=tmp_path, env=sdk_env)
    _, stderr = bad.communicate(timeout=60)
    assert bad.returncode == 2
    assert stderr.strip().splitlines() == [
        "vmguard: error: spot_policy='spto' is not a policy; did you mean 'spot'? use one of on-demand, spot, "
        "spot_with_fallback"]
    assert_nothing_left(runner)


def test_with_more_workers_the_command_uses_the_cluster(runner: VmRunner, sdk_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    script = "from distributed import Client; print(Client().submit(sum, [1, 2]).result(), flush=True)"
    process = vmguard("--n-workers", "2", "--", "python", "-c", script, cwd=tmp_path, env=sdk_env)
    stdout, stderr = process.communicate(timeout=180)
    assert (process.returncode, stdout) == (0, "3\n"), stderr
    assert "2 worker(s) of m5.large" in stderr
    assert_nothing_left(runner)


def test_ctrl_c_shuts_the_cluster_down_and_exits_130(runner: VmRunner, sdk_env: dict[str, str],
                                                     tmp_path: Path) -> None:
    script = "import time; print('started', flush=True); time.sleep(120)"
    process = vmguard("python", "-c", script, cwd=tmp_path, env=sdk_env)
    try:
        assert process.stdout.readline() == "started\n"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "shut down" in stderr
    assert_nothing_left(runner)


def test_by_default_the_command_runs_in_this_environment_replicated(runner: VmRunner, sdk_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    (tmp_path / "where.py").write_text("import sys\nprint(sys.prefix)\n")
    environment = {k: v for k, v in os.environ.items() if k != "VMGUARD_DAEMON_URL"} | sdk_env
    process = subprocess.run([*VMGUARD[:-1], "--", "python", "where.py"], cwd=tmp_path, env=environment,
                             capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    assert "sandbox-venvs" in process.stdout and process.stdout.strip() != sys.prefix, process.stdout
    assert "vmguard: environment " in process.stderr  # replicated, as sdk.Cluster does
    assert_nothing_left(runner)
