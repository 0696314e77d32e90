"""Exit statuses shared by every `graddoctor` command, so a pipeline can gate on them."""

from enum import IntEnum


class ExitCode(IntEnum):
    HEALTHY = 0        # diagnosis ran and the model is healthy (or a command succeeded)
    INTERNAL = 1       # a bug or an unexpected failure on our side
    BAD_INPUT = 2      # bad input or usage: the message names the file, field, node or op
    UNHEALTHY = 3      # diagnosis ran and the verdict is vanishing or exploding
    REGRESSED = 5      # `compare`: gradient health got worse beyond --factor
