"""The one exception type for mistakes a user can fix (bad file, bad flag, impossible request).

Scripts catch it and print a single line on stderr with exit status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and, where possible, the fix."""
