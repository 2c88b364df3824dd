"""The life of one sweep point's Job as the launcher follows it: its states and the one table of the
transitions between them. ``SweepRun._advance`` (in ``_cluster.py``) is the only place a state changes.

    from        to          on                                                        where
    QUEUED      SUBMITTED   a slot under max_in_flight; the point's manifests created  _refill
    QUEUED      FAILED      the sweep timeout, before the point got a Job              _time_out
    SUBMITTED   PENDING     the Job seen with no active pod                            _observe
    SUBMITTED,  RUNNING     the Job seen with an active pod (again: the progress view  _observe
    PENDING,                shows Running over a waiting reason)
    RUNNING
    in flight   COMPLETE    Job condition Complete; the result read from the leader's  _observe
                            pod log
    in flight   FAILED      Job condition Failed; or a pod waiting on a STUCK_REASONS  _observe,
                            reason for stuck_pod_grace_s (the Job deleted)             _check_pods
    in flight   DELETED     the Job gone (deleted by someone else, or its TTL); or     _gone,
                            deleted by this sweep: timed out (an outcome), or stopped  delete_all
                            early by Ctrl-C or an error (no outcome)

In flight: SUBMITTED, PENDING, RUNNING. COMPLETE, FAILED and DELETED are final; every final state but
an early stop's DELETED comes with the point's outcome.
"""

from enum import Enum


class JobState(Enum):
    """A sweep point's Job; the value is what the progress view shows."""

    QUEUED = "Queued"
    SUBMITTED = "Submitted"
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    DELETED = "Deleted"


IN_FLIGHT = frozenset({JobState.SUBMITTED, JobState.PENDING, JobState.RUNNING})
FINAL = frozenset({JobState.COMPLETE, JobState.FAILED, JobState.DELETED})
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.SUBMITTED, JobState.FAILED}),
    JobState.SUBMITTED: frozenset({JobState.PENDING, JobState.RUNNING, *FINAL}),
    JobState.PENDING: frozenset({JobState.RUNNING, *FINAL}),
    JobState.RUNNING: frozenset({JobState.RUNNING, *FINAL}),
}
"""state -> the states it may go to; a final state goes nowhere."""
