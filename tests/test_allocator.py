"""ldyn.runtime.allocator: glibc keeps freed memory when asked, and LDYN_MALLOC=default leaves it alone."""

import subprocess
import sys

import pytest

from ldyn.runtime.allocator import keep_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert keep_freed_memory() is True


def test_opt_out_leaves_malloc_alone():
    code = "from ldyn.runtime.allocator import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], env={"LDYN_MALLOC": "default"}, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr
