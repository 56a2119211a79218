"""The ``sdk`` package's public names: each one stays what it is however often, and after whatever imports, it is
used — a submodule of the same name would replace it on first import."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import sdk


def test_the_decorator_works_twice_in_a_fresh_interpreter() -> None:
    script = textwrap.dedent("""
        import sdk

        @sdk.function(vm_type="m5.large", region="us-east-1", n_workers=1)
        def first(x):
            return x

        @sdk.function(vm_type="m5.large", region="us-east-1", n_workers=2)
        def second(x):
            return x

        assert isinstance(first, sdk.Function) and isinstance(second, sdk.Function), (first, second)
        assert callable(sdk.function) and callable(sdk.price_table)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "AWS_DEFAULT_REGION": "us-east-1", "VMGUARD_OWNER": "tester"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_no_submodule_is_named_like_a_public_name() -> None:
    submodules = {module.name for module in pkgutil.iter_modules(sdk.__path__)}
    assert submodules, "the sdk package has submodules"
    assert not submodules & set(sdk.__all__)


def test_every_public_name_resolves_to_what_it_names() -> None:
    for name in sdk.__all__:
        value = getattr(sdk, name)
        assert getattr(value, "__name__", name) == name
        assert getattr(sdk, name) is value
