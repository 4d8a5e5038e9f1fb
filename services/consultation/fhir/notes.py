"""The mapping's notes: what a bundle held that the native prescription has no place for, and the
defaults the mapping took in place of what the bundle left out. They travel with the prescription
(`Prescription.mapping_notes`), so the pharmacist sees them, and nothing is dropped silently.
"""

from __future__ import annotations

#: As the contract holds them: at most 50 notes of 300 characters.
MOST_NOTES = 50
NOTE_LENGTH = 300


class Notes:
    def __init__(self) -> None:
        self._notes: list[str] = []
        self._more = 0

    def add(self, note: str) -> None:
        note = " ".join(note.split())
        if len(note) > NOTE_LENGTH:
            note = note[: NOTE_LENGTH - 1] + "…"
        if note in self._notes:
            return
        if len(self._notes) < MOST_NOTES - 1:
            self._notes.append(note)
        else:
            self._more += 1

    def all(self) -> tuple[str, ...]:
        more = (f"{self._more} more notes left out",) if self._more else ()
        return (*self._notes, *more)
