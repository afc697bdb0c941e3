"""`mll23 verify`: a release directory (local), a published release on the Hub (remote), the stamp of a passed verify.

The local verify is a registry of checks (`registry`) over one view of the release (`view`), a module per
check under `checks/`; this package names what its callers use.
"""

from pipeline.lifecycle.verify.checks.files import listed_file_problems
from pipeline.lifecycle.verify.options import HubLimits, ReadLimits, RebuildRequest, VerifyOptions
from pipeline.lifecycle.verify.registry import CHECKS, REQUESTED_CHECKS, Check, run_checks, verify_messages, verify_release
from pipeline.lifecycle.verify.report import CheckResult, Failure

__all__ = [
    "CHECKS",
    "REQUESTED_CHECKS",
    "Check",
    "CheckResult",
    "Failure",
    "HubLimits",
    "ReadLimits",
    "RebuildRequest",
    "VerifyOptions",
    "listed_file_problems",
    "run_checks",
    "verify_messages",
    "verify_release",
]
