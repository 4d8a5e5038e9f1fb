"""The county gazetteer places an address that came without coordinates by the names people use,
in Uyghur, Chinese or Latin letters, the most specific place named first; one it cannot place
keeps none (a dispatcher places it)."""

from __future__ import annotations

import pytest

from services.consultation.gazetteer import Gazetteer, Place, normalised
from tests.unit.builders import make_prescription

GAZETTEER = Gazetteer.load()


def without_coordinates(line: str, town: str):
    prescription = make_prescription()
    address = prescription.patient.address.model_copy(update={"line": line, "town": town, "coordinates": None})
    return prescription.model_copy(update={"patient": prescription.patient.model_copy(update={"address": address})})


@pytest.mark.parametrize("name", ["Steppe Wells", "steppe-wells", "چۆل قۇدۇق", "草原井村", "Chöl Quduq", "CAOYUANJING"])
def test_a_place_is_found_by_any_of_its_names_in_any_script(name):
    place = GAZETTEER.find(name)
    assert place is not None and place.place_id == "STEPPE-WELLS"


def test_a_farmstead_named_in_a_line_beats_the_township_in_the_town_field():
    place = GAZETTEER.find("House 3, Red Cliff", "Riverton")
    assert place is not None and place.place_id == "RED-CLIFF"


def test_two_places_of_one_kind_sharing_a_name_place_nothing():
    twins = [Place(f"P{i}", "village", "Aksu", ("Aksu",), 50.0 + i, 70.0) for i in range(2)]
    assert Gazetteer(twins).find("Aksu") is None


def test_an_address_without_coordinates_is_placed_and_says_where():
    placed = GAZETTEER.placed(without_coordinates("Farmstead 12", "قارا بۇلاق"))
    coordinates = placed.patient.address.coordinates
    assert coordinates is not None and (coordinates.latitude, coordinates.longitude) == (52.20, 71.38)
    assert (
        placed.mapping_notes[-1] == "no coordinates: placed at the county gazetteer's village Kara-Bulak (KARA-BULAK)"
    )


def test_an_unknown_place_or_an_address_with_coordinates_is_left_as_it_is():
    unknown = without_coordinates("Farmstead 12", "Atlantis")
    assert GAZETTEER.placed(unknown) == unknown
    located = make_prescription()
    assert GAZETTEER.placed(located) == located


def test_names_compare_without_case_accents_or_punctuation():
    assert normalised("Kara-Bulak") == normalised("kara bulak") == "kara bulak"
    assert normalised("Égiz  Dawan") == "egiz dawan"
