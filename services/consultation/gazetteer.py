"""The county gazetteer: villages, townships and farmsteads with their coordinates and the names
people use for them, in Uyghur, Chinese and Latin transcription. A prescription whose address came
without coordinates is placed by the name of a place in its lines or its town; one the gazetteer
does not know keeps none, and the courier service holds it for a dispatcher
(`pharmacy dispatch locate`). Pure: the places are read once, at startup.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pharmacy_contracts.consultation import Coordinates, Prescription

#: The county's own, shipped with the service; a deployment names another (PHARMACY_GAZETTEER_FILE).
BUNDLED = Path(__file__).with_name("data") / "gazetteer.json"
#: Most specific first: a farmstead named in a line beats the township in the town field.
KINDS = ("farmstead", "village", "township")


@dataclass(frozen=True)
class Place:
    place_id: str
    kind: str
    name: str
    names: tuple[str, ...]
    latitude: float
    longitude: float


def normalised(name: str) -> str:
    """Case, accents, punctuation and spacing do not tell names apart: "Chöl-Quduq" is "chol quduq"."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name))
    bare = "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn")
    return " ".join(re.sub(r"[\W_]+", " ", bare.casefold()).split())


def _names(names: dict[str, str | list[str]]) -> list[str]:
    """Every name a place goes by, in every script the file gives (a script may list several)."""
    return [n for value in names.values() for n in ([value] if isinstance(value, str) else value)]


class Gazetteer:
    def __init__(self, places: Iterable[Place]) -> None:
        self.places = {place.place_id: place for place in places}
        self._by_name: dict[str, list[Place]] = {}
        for place in self.places.values():
            for name in {normalised(n) for n in place.names if n}:
                self._by_name.setdefault(name, []).append(place)

    @classmethod
    def load(cls, path: Path = BUNDLED) -> Gazetteer:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            Place(
                place_id=entry["id"],
                kind=entry["kind"],
                name=entry["name"],
                names=(entry["name"], *_names(entry["names"])),
                latitude=float(entry["latitude"]),
                longitude=float(entry["longitude"]),
            )
            for entry in data["places"]
        )

    def find(self, *texts: str) -> Place | None:
        """The most specific place one of these texts names whole, or a part of it between commas;
        None when none does, or when two places of the same kind share the name."""
        found: list[Place] = []
        for text in texts:
            for part in [text, *text.split(",")]:
                found += self._by_name.get(normalised(part), [])
        for kind in KINDS:
            of_kind = {p.place_id: p for p in found if p.kind == kind}
            if len(of_kind) == 1:
                return next(iter(of_kind.values()))
            if len(of_kind) > 1:
                return None  # ambiguous: a dispatcher decides
        return None

    def placed(self, prescription: Prescription) -> Prescription:
        """The prescription with its address placed at the gazetteer's entry, if it had no
        coordinates and the gazetteer knows the place (said in its mapping notes)."""
        address = prescription.patient.address
        if address.coordinates is not None:
            return prescription
        place = self.find(address.line, address.town)
        if place is None:
            return prescription
        located = address.model_copy(
            update={"coordinates": Coordinates(latitude=place.latitude, longitude=place.longitude)}
        )
        patient = prescription.patient.model_copy(update={"address": located})
        note = f"no coordinates: placed at the county gazetteer's {place.kind} {place.name} ({place.place_id})"
        notes = [*prescription.mapping_notes, note][-50:]
        return prescription.model_copy(update={"patient": patient, "mapping_notes": notes})
