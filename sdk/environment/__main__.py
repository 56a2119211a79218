"""``python -m sdk.environment capture|lock|install``: the environment steps from a shell.

    python -m sdk.environment capture                       # what is installed, classified (JSON)
    python -m sdk.environment lock --arch aarch64           # the VMs' lock for that architecture
    python -m sdk.environment install --bundle FILE|URL --into DIR --python 3.11 [--hash SHA256]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from sdk.errors import SdkError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdk.environment", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cap = commands.add_parser("capture", help="print this environment, classified, as JSON")
    cap.add_argument("--python", help="another interpreter to read")
    lock = commands.add_parser("lock", help="build (or reuse) the bundle for an architecture; print its lock")
    lock.add_argument("--arch", default="x86_64")
    lock.add_argument("--python", help="another interpreter to read")
    inst = commands.add_parser("install", help="install a bundle into a new venv")
    inst.add_argument("--bundle", required=True, help="the bundle's .tar.gz path or http(s) URL")
    inst.add_argument("--into", required=True, help="the venv directory to create")
    inst.add_argument("--python", required=True, help="the Python version of the venv, e.g. 3.11")
    inst.add_argument("--hash", help="the bundle's expected sha256")
    args = parser.parse_args(argv)
    try:
        if args.command == "capture":
            from sdk.environment.capture import capture

            env = capture(args.python)
            print(json.dumps(dataclasses.asdict(env), default=str, indent=1))
        elif args.command == "lock":
            from sdk.environment.bundle import build_bundle
            from sdk.environment.capture import capture

            bundle = build_bundle(capture(args.python), args.arch)
            print(bundle.requirements, end="")
            print(f"# bundle {bundle.path} sha256 {bundle.hash} ({bundle.size} bytes"
                  f"{', from the cache' if bundle.reused else ''})", file=sys.stderr)
        else:
            from sdk.environment.install import install

            python = install(args.bundle, args.into, args.python, expected_hash=args.hash)
            print(python)
    except SdkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
