"""The summary line: every DIRAC status counted in exactly one column, in the seed's format."""
import grid
from DIRAC.WorkloadManagementSystem.Client import JobStatus


def test_every_dirac_status_lands_in_exactly_one_column():
    columns_per_status = {}
    for index, (_, statuses) in enumerate(grid.COLUMNS):
        for status in statuses:
            columns_per_status.setdefault(status, []).append(index)
    assert set(JobStatus.JOB_STATES) <= set(columns_per_status)
    assert all(len(cols) == 1 for cols in columns_per_status.values())
    assert set(columns_per_status) == set(JobStatus.JOB_STATES)   # no status DIRAC does not know


def test_columns_are_the_seeds_letters_in_order():
    assert [letter for letter, _ in grid.COLUMNS] == ["S", "R", "W", "M", "R", "D", "F"]


def test_final_statuses_follow_dirac_except_completed_which_still_moves_on():
    dirac_final = set(JobStatus.JOB_FINAL_STATES) | set(JobStatus.JOB_REALLY_FINAL_STATES)
    assert grid.FINAL == dirac_final - {JobStatus.COMPLETED}
    machine = JobStatus.JobsStateMachine(JobStatus.COMPLETED)
    assert set(machine.states[JobStatus.COMPLETED].stateMap) == {JobStatus.DONE, JobStatus.FAILED}


def test_summary_line_has_the_seeds_exact_format():
    counts = grid.column_counts(["Done"] * 10)
    assert grid.summary_line(counts) == "S:   0\tR:   0\tW:   0\tM:   0\tR:   0\tD:  10\tF:   0"


def test_counts_put_each_status_in_its_column():
    statuses = ["Submitting", "Received", "Checking", "Waiting", "Matched", "Running", "Stalled",
                "Done", "Completed", "Failed", "Killed", "Deleted"]
    assert grid.column_counts(statuses) == [1, 2, 1, 1, 2, 2, 3]


def test_an_unknown_future_status_is_still_counted_once():
    assert sum(grid.column_counts(["SomethingNew", "Done"])) == 2
