"""Cloud Custodian's own ``custodian`` command, counting every AWS request it sends.

Run by the interpreter of Cloud Custodian's virtualenv (not vmguard's), as
``python bench/c7n_run.py CALLS_JSON run …``: every botocore client made in the process gets a ``before-send``
handler (the event botocore fires once per HTTP request, retries included: the same event vmguard counts on), and
the counts by ``service:Operation`` are written to CALLS_JSON when the process exits. Nothing else of Custodian is
changed; the rest of the arguments go to ``custodian`` as they are.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
from collections import Counter

_counts: Counter[str] = Counter()
_lock = threading.Lock()


def _count(event_name: str, **_: object) -> None:
    _, service, operation = event_name.split(".", 2)  # before-send.<service>.<Operation>
    with _lock:
        _counts[f"{service}:{operation}"] += 1


def _install() -> None:
    import botocore.session

    create_client = botocore.session.Session.create_client

    def counting_client(self, *args, **kwargs):
        client = create_client(self, *args, **kwargs)
        client.meta.events.register("before-send", _count)
        return client

    botocore.session.Session.create_client = counting_client


def _write(path: str) -> None:
    with _lock, open(path, "w") as out:
        json.dump(dict(sorted(_counts.items())), out)


if __name__ == "__main__":
    calls_path = sys.argv[1]
    _install()
    atexit.register(_write, calls_path)
    from c7n.cli import main

    sys.argv = ["custodian", *sys.argv[2:]]
    sys.exit(main())
