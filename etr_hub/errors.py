"""User-facing errors: one line that names the problem and the fix."""


class EtrHubError(Exception):
    """An error the user can fix. The CLI prints `error: <message>` and exits non-zero."""

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class BundleError(EtrHubError):
    """A bundle that fails validation; nothing has been written."""

    exit_code = 2


class RegistryError(EtrHubError):
    exit_code = 3


class ModelLoadError(EtrHubError):
    exit_code = 4


class DataError(EtrHubError):
    exit_code = 5
