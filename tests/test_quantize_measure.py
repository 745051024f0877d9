"""Peak memory of a comparison row: the process's own, not its parent's."""

from __future__ import annotations

import subprocess
import sys

from tutorlm.quantize.measure import peak_rss_bytes


def test_peak_rss_reads_the_high_water_mark_of_proc_status(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 900000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t 1000 kB\n")
    assert peak_rss_bytes(str(status)) == 123456 * 1024


def test_a_child_process_does_not_inherit_the_parents_peak():
    ballast = bytearray(300 * 2**20)  # the parent's peak grows by 300 MiB
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = "from tutorlm.quantize.measure import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )
    assert peak_rss_bytes() > 300 * 2**20
    assert child < peak_rss_bytes() - 200 * 2**20
    del ballast
