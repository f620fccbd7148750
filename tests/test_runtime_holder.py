"""Lease holders (jobs/runtime/holder.py): a dead process on this host is recognised at once."""
from __future__ import annotations

import json
import subprocess
import sys

from jobs.runtime.holder import holder_is_dead, this_process


def test_this_process_is_alive_and_a_finished_one_is_dead():
    me = this_process()
    assert me["pid_start"] is not None and not holder_is_dead(me)
    proc = subprocess.Popen([sys.executable, "-c",
                             "import json; from jobs.runtime.holder import this_process; "
                             "print(json.dumps(this_process()))"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    child = json.loads(out)
    assert child["pid"] != me["pid"] and holder_is_dead(child)


def test_reused_pid_other_host_and_old_records():
    me = this_process()
    assert holder_is_dead(dict(me, pid_start=me["pid_start"] + 1))   # the pid now names another
    assert not holder_is_dead(dict(me, host="elsewhere", pid=1 << 30))  # unknowable: heartbeat
    assert not holder_is_dead(dict(me, boot_id="another-boot", pid=1 << 30))
    assert not holder_is_dead(None) and not holder_is_dead({"pid": "x"})
