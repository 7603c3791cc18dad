"""The one error type users see: it names the problem and how to fix it."""


class DigitlabError(Exception):
    """An error the user can fix. The CLI prints problem and fix and exits with status 2."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __reduce__(self):  # keeps the fix when the error crosses processes (`digitlab ensemble --jobs`)
        return type(self), (self.problem, self.fix)

    def __str__(self) -> str:
        return f"{self.problem}\n  fix: {self.fix}" if self.fix else self.problem
