"""The one error type the command line turns into a message and exit status 2."""


class PluginError(RuntimeError):
    """A problem the user can fix (server unreachable, key rejected, bad input file).

    The message is printed as is, without a traceback, so it must say what was wrong
    and what to do about it.
    """
