"""Feature flags: the shared model, bucketing and the local evaluator (pure code).

One definition serves the server (write-time validation), the client
(evaluation) and the wire (flag sets travel as the model's JSON form inside
Watch snapshots).
"""

from confmesh.flags.details import ErrorCode, EvaluationDetails, Reason
from confmesh.flags.evaluator import FlagEvaluator, UsageCounter
from confmesh.flags.model import Flag, FlagSet, parse_flag_set, reparse_flag_set

__all__ = [
    "ErrorCode",
    "EvaluationDetails",
    "Flag",
    "FlagEvaluator",
    "FlagSet",
    "Reason",
    "UsageCounter",
    "parse_flag_set",
    "reparse_flag_set",
]
