"""The suite's S3 endpoint serializes conditional writes, as S3 does (tests/support/moto_atomic.py).

moto's race between the check of ``If-None-Match`` and the write is a window of a few
bytecodes: threads racing for one key against unpatched moto rarely hit it (a race of 8
writers on 40 keys never did here), so what is tested is the precondition the patch stands
on: every handler it wraps exists in the installed moto, so the server starts patched.
"""

from __future__ import annotations

import subprocess
import sys

from support.s3server import ATOMIC_SERVER


def test_the_suites_s3_server_starts_with_every_write_handler_of_moto_serialized():
    started = subprocess.run(
        [sys.executable, "-c", f"import runpy, sys; sys.argv = ['moto_atomic']; "
         f"ns = runpy.run_path({str(ATOMIC_SERVER)!r}); ns['install'](); "
         "from moto.s3.responses import S3Response; "
         "print(all(getattr(S3Response, n).__wrapped__ for n in ns['WRITES']))"],
        capture_output=True, text=True, timeout=120,
    )
    assert (started.returncode, started.stdout.strip()) == (0, "True"), started.stderr
