"""What doctune reads off the machine: cores that other programs keep busy."""

from __future__ import annotations

from doctune.machine import busy_cores, cpu_contention_warning


def test_warns_when_other_programs_take_cores_the_threads_need() -> None:
    said = cpu_contention_warning(threads=2, cores=2, busy=1.0)
    assert said is not None and "~1.0 of this machine's 2 cores" in said
    assert "`--set train.num_threads=1`" in said
    # 8 threads on 16 logical CPUs: a browser's 1.5 cores leave room
    assert cpu_contention_warning(threads=8, cores=16, busy=1.5) is None
    # 8 threads on 8 CPUs with 3 busy: use the 5 free ones
    said = cpu_contention_warning(threads=8, cores=8, busy=3.2)
    assert said is not None and "train.num_threads=5" in said


def test_quiet_machine_and_single_thread_say_nothing() -> None:
    assert cpu_contention_warning(threads=2, cores=2, busy=0.2) is None  # background noise
    assert cpu_contention_warning(threads=1, cores=2, busy=1.9) is None  # nothing to wait for
    assert 0.0 <= busy_cores(0.05) <= 64.0
