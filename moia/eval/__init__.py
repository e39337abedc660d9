"""Grading and statistics (PROTOCOL §3): the rule grader, the LLM-judge interface, intervals."""

from .grading import Grade, grade
from .judge import HTTPJudge, Judge, RuleJudge, make_judge
from .stats import clopper_pearson_upper, rate, wilson_interval

__all__ = [
    "Grade",
    "HTTPJudge",
    "Judge",
    "RuleJudge",
    "clopper_pearson_upper",
    "grade",
    "make_judge",
    "rate",
    "wilson_interval",
]
