"""One exception type for mistakes a user can fix; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input from the user (a name, a value, a path). The message says what to do."""

    exit_code = 2  # the CLI's exit status for it


class DataSourceFailed(UserError):
    """The training data stopped coming for good: a whole pass over a source's shards gave no usable
    sample (e.g. the shard server went away). Training saves a checkpoint first and exits with
    EX_UNAVAILABLE of sysexits.h ("service unavailable"): --resume continues once the data is back."""

    exit_code = 69


def one_line(err: Exception) -> str:
    """The message of an error; one raised in a DataLoader worker arrives re-raised by torch with the
    worker's whole traceback as its message, whose last line is the original one."""
    text = str(err)
    if "\nOriginal Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    return last.removeprefix(f"{type(err).__module__}.{type(err).__qualname__}: ")
