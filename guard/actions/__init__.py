"""Remediation: what the daemon may do about a finding, the safety gates, and the write-ahead action runner."""

from guard.actions.executors import EXECUTORS, Executor, Observed, Outcome
from guard.actions.gates import Candidate, Policy, Verdict, breaker_open, decide
from guard.actions.runner import ActionReport, Actuator

__all__ = ["EXECUTORS", "ActionReport", "Actuator", "Candidate", "Executor", "Observed", "Outcome", "Policy",
           "Verdict", "breaker_open", "decide"]
