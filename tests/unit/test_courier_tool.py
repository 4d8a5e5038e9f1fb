"""What a courier's tool prints of a job: the door as a geo: URI and a map link (or that there is no
pin), and the contact phone as a tel: URI in one piece, however narrow the screen."""

from __future__ import annotations

import io

from rich.console import Console

from pharmacy_contracts.consultation import Coordinates
from services.cli.couriers import _phone, _where


def test_the_door_is_a_geo_uri_and_a_map_link():
    where = _where(Coordinates(latitude=51.8123456, longitude=69.4))
    assert " geo:51.81235,69.40000 " in where
    assert where.endswith("https://www.openstreetmap.org/?mlat=51.81235&mlon=69.40000#map=16/51.81235/69.40000")


def test_an_address_without_a_pin_says_to_find_it_by_the_address():
    assert _where(None) == " (no map pin: find it by the address)"


def test_the_phone_never_breaks_across_lines_and_a_missing_one_is_said():
    console = Console(file=io.StringIO(), width=24, color_system=None)
    console.print(f"call the patient {_phone('+7 701 555 0134')} at the gate")
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert any("tel:+77015550134" in line for line in lines)
    assert _phone(None) == "☎ none given"
