"""One exception type for mistakes a user can make; the CLI prints its message as one line."""


class AlarmError(Exception):
    """A user-fixable problem: bad config, malformed data, missing file, unreachable server.

    The message says what is wrong and how to fix it.
    """
