"""``vmguard run``'s pure parts: options to ``sdk.Cluster`` arguments, one-line usage errors (exit 2) before anything
is launched, the working directory's code, and the command runner's streams and exit codes."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from sdk import command
from sdk.cli import cluster_kwargs, main
from sdk.errors import SdkError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_PROFILE", "VMGUARD_MAX_HOURLY_USD", "VMGUARD_DAEMON_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("VMGUARD_OWNER", "alice@example.com")


def test_options_become_the_clusters_arguments() -> None:
    assert cluster_kwargs(vm_type=["m7g.large"], region=["us-west-2", "us-east-1"], n_workers=1, cpu=None,
                          environ=["A=1", "B=x=y"], tags=[], environment=False) == {
        "vm_type": "m7g.large", "region": ["us-west-2", "us-east-1"], "n_workers": 1,
        "environ": {"A": "1", "B": "x=y"}, "environment": False}


@pytest.mark.parametrize("args, message", [
    (["--vm-tpye", "m5.large", "--", "true"], "No such option: --vm-tpye"),
    (["--env", "FOO", "--", "true"], "--env 'FOO' must be KEY=VALUE"),
    (["--n-workers", "0", "--", "true"], "--n-workers 0: the command runs on a worker; pass at least 1"),
    (["--keepalive", "1s", "--", "true"], "keepalive='1s' is shorter than 10s"),
    (["--region", "us-est-1", "--", "true"], "unknown region 'us-est-1'; did you mean"),
    (["--worker-memory", "lots", "--", "true"], "worker_memory='lots' is not a size"),
    ([], "Missing argument 'command'"),
])
def test_a_bad_option_is_one_line_and_exit_code_2(args: list[str], message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *args]) == 2
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert line.startswith("vmguard: error: ") and message in line, line
    assert captured.out == ""


def test_the_working_directorys_code_is_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train.py").write_text("import helpers\n")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "model.py").write_text("X = 1\n")
    (tmp_path / "data.csv").write_text("a,b\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "junk.py").write_text("")
    assert command.workdir_files(tmp_path) == {"train.py": b"import helpers\n", "pkg/__init__.py": b"",
                                               "pkg/sub/model.py": b"X = 1\n"}
    monkeypatch.setattr(command, "MAX_FILES_BYTES", 4)
    with pytest.raises(SdkError, match=r"the working directory's code is 0 MiB \(at most 0 MiB"):
        command.workdir_files(tmp_path)


def _run(argv: list[str], tmp_path: Path, closing=lambda: False) -> tuple[int, list[tuple[str, str]]]:
    sent: list[tuple[str, str]] = []
    lock = threading.Lock()

    def send(message: dict) -> None:
        with lock:
            sent.append((message["stream"], message["text"]))

    return command._run(argv, tmp_path, {"PATH": "/usr/bin:/bin"}, send, closing), sent


def test_the_runner_streams_both_outputs_line_by_line_and_returns_the_exit_code(tmp_path: Path) -> None:
    code, sent = _run([sys.executable, "-c", "import sys; print('a'); print('b', file=sys.stderr); print('c'); "
                       "sys.exit(4)"], tmp_path)
    assert code == 4
    assert [text for stream, text in sent if stream == "stdout"] == ["a\n", "c\n"]
    assert [text for stream, text in sent if stream == "stderr"] == ["b\n"]


def test_a_missing_command_is_127_and_a_killed_one_128_plus_its_signal(tmp_path: Path) -> None:
    code, sent = _run(["no-such-command-here"], tmp_path)
    assert code == 127 and sent == [("stderr", "vmguard: no-such-command-here: command not found on the VM\n")]
    code, _ = _run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"], tmp_path)
    assert code == 128 + 15


def test_a_closing_worker_kills_the_command_and_what_it_started(tmp_path: Path) -> None:
    code, _ = _run(["sh", "-c", "sleep 60 & sleep 60"], tmp_path, closing=lambda: True)
    assert code == 128 + 9
