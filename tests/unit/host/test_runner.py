import sys

import pytest

from ktpy.errors import HostChangeFailed
from ktpy.host.runner import check, run


def test_run_collects_output_and_exit_code() -> None:
    done = run([sys.executable, "-c", "import sys; print('out'); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.ok) == (3, "out\n", False)


def test_a_missing_program_is_exit_127() -> None:
    done = run(["ktpy-no-such-program"])
    assert done.returncode == 127
    assert "command not found" in done.describe()


def test_check_names_what_could_not_be_done() -> None:
    done = run([sys.executable, "-c", "import sys; sys.exit('RTNETLINK answers: File exists')"])
    with pytest.raises(HostChangeFailed) as caught:
        check(done, "add route 10.96.0.0/16")
    message = caught.value.format_message()
    assert message.startswith(f"cannot add route 10.96.0.0/16: {sys.executable} -c ")
    assert message.endswith("exit 1: RTNETLINK answers: File exists")
