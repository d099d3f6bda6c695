"""Errors that mean "the user's input is wrong" (exit code 2), as opposed to bugs (exit code 1)."""


class UserError(Exception):
    """Bad input: a file that cannot be read, an unknown format, an unavailable method. Exit 2."""


class ConfigError(UserError):
    """A config value is wrong. The message always starts with the key path, e.g. `data.sources[0].path`."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)
