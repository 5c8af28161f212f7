"""kill -9 at random moments, resume each time: the final run equals an uninterrupted one bit for
bit. The short version (3 kills, 2 of them inside a checkpoint write); scripts/reliability.py runs
10 and docs/reliability.md has its figures."""

from tests.faults import kill_and_resume


def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path):
    report = kill_and_resume(tmp_path, kills=3, seed=1, steps=300, modes=["checkpoint", "step", "checkpoint"])
    assert len(report.kills) == 3 and report.missed == 0
    assert report.mid_checkpoint >= 1, report.kills  # a kill landed while a checkpoint's temporary file existed
    assert report.damaged == 0  # no checkpoint on disk ever fails its hash after a kill
    assert report.resumes == 3 and report.temp_files_after == 0
    assert report.checkpoints_compared > 50 and report.bytes_lost == 0 and report.log_rows_lost == 0
