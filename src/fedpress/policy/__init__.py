"""Adaptive communication: per-client codecs chosen from links, deadlines and byte budgets."""

from fedpress.policy.estimator import LinkEstimator
from fedpress.policy.policies import (
    DEFAULT_LADDER,
    Accordion,
    Budget,
    ClientView,
    Deadline,
    Policy,
    RoundInfo,
    make_policy,
)

__all__ = ["DEFAULT_LADDER", "Accordion", "Budget", "ClientView", "Deadline", "LinkEstimator", "Policy",
           "RoundInfo", "make_policy"]
