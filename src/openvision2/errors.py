"""One exception type for mistakes a user can fix; the CLI prints it as a single line."""


class UserError(Exception):
    """Bad input from the user (a name, a value, a path). The message says what to do."""
