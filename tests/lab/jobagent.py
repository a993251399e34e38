#!/usr/bin/env python
"""The lab's local pilot: DIRAC's own JobAgent (what `dirac-agent WorkloadManagement/JobAgent` runs),
with two changes for a test lab, so that a job submitted to an idle lab starts within seconds:

1. DIRAC's AgentReactor runs agent cycles at least 10 s apart whatever PollingTime says
   (ThreadScheduler(minPeriod=10)); here the minimum is 1 s, so PollingTime is honoured.
2. Stock JobAgent sleeps PollingTime * (failed matches + 1) * 2 after every cycle that matched no job, and the
count only resets when a job is matched: an agent left idle for a few minutes waits minutes before it
looks for work again. Here every sleep of the JobAgent module is capped at PollingTime, so a new job is
picked up within about 2 * PollingTime however long the agent was idle.

usage (lab.sh does this): python jobagent.py [dirac-agent options]
"""
import sys
import time as _time
import types

from DIRAC.Core.Base import AgentReactor as _reactor_module
from DIRAC.Core.Utilities import ThreadScheduler as _ts_module
from DIRAC.WorkloadManagementSystem.Agent import JobAgent as _jobagent_module


class _ThreadScheduler(_ts_module.ThreadScheduler):
    def __init__(self, *args, **kwargs):
        kwargs["minPeriod"] = 1
        super().__init__(*args, **kwargs)


_reactor_module.ThreadScheduler = types.SimpleNamespace(ThreadScheduler=_ThreadScheduler)


class _CappedTime:
    """The `time` module as the JobAgent module sees it, with sleep() capped at its PollingTime."""

    cap = 2.0

    def __getattr__(self, name):
        return getattr(_time, name)

    def sleep(self, seconds):
        _time.sleep(min(seconds, self.cap))


_capped = _CappedTime()
_jobagent_module.time = _capped

_orig_initialize = _jobagent_module.JobAgent.initialize


def _initialize(self):
    result = _orig_initialize(self)
    _capped.cap = float(self.am_getOption("PollingTime"))
    return result


_jobagent_module.JobAgent.initialize = _initialize

if __name__ == "__main__":
    from DIRAC.Core.scripts.dirac_agent import main

    sys.argv = ["dirac-agent", "WorkloadManagement/JobAgent", *sys.argv[1:]]
    sys.exit(main())
