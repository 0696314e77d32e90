"""Exit statuses shared by every `graddoctor` command, so a pipeline can gate on them."""

from enum import IntEnum


class ExitCode(IntEnum):
    HEALTHY = 0        # diagnosis ran and the model is healthy (or a command succeeded)
    INTERNAL = 1       # a bug or an unexpected failure on our side
    BAD_INPUT = 2      # bad input or usage: the message names the file, field, node or op
    UNHEALTHY = 3      # diagnosis ran and the verdict is vanishing or exploding
    INCONCLUSIVE = 4   # diagnosis ran but cannot tell (rounding noise, folded export): see why
    REGRESSED = 5      # `compare`: gradient health got worse beyond --factor


def for_verdict(status: str) -> ExitCode:
    """The exit status a finished diagnosis gets from its verdict's status."""
    if status == "healthy":
        return ExitCode.HEALTHY
    if status == "inconclusive":
        return ExitCode.INCONCLUSIVE
    return ExitCode.UNHEALTHY
