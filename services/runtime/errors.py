"""Errors the runtime gives meaning to."""


class Refused(Exception):
    """A well-formed message the service will not act on (a forged sender, an unknown delivery).

    It is dead-lettered with this reason at once: retrying cannot make it acceptable. Raised from
    inside a `decide` function, the refusal is also remembered on the document, so a replay of the
    same message is recognised and not dead-lettered a second time.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
