"""The one exception type for mistakes a user can fix: a bad recipe key, a missing folder, a wrong checkpoint."""


class UsageError(Exception):
    """A failure caused by user input; its message names the key, file or value and says the fix."""
