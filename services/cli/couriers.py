"""`pharmacy courier`, `pharmacy couriers` and `pharmacy dispatch`: the couriers' own commands
(their jobs, with the door as a geo: URI, and their signed reports, answered at once), and the
dispatchers' (the roster, couriers' tokens, placing addresses that came without coordinates).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.markup import escape

from pharmacy_contracts import courier as c
from pharmacy_contracts import topics
from pharmacy_contracts.consultation import Coordinates
from services.consultation.gazetteer import Gazetteer, Place, normalised
from services.courier.domain import CourierProfile
from services.courier.storage import CourierStorage
from services.runtime import credentials
from services.runtime.credentials import MAX_ISSUE, courier_token

from . import bus
from .render import Fitted, listing, print_json
from .running import console, run, say_answer, settings_from_env, with_database

courier = typer.Typer(no_args_is_help=True, help="For couriers: receive dispatches and report on them.")
roster = typer.Typer(no_args_is_help=True, help="For dispatchers: the courier roster and couriers' tokens.")
dispatch = typer.Typer(
    no_args_is_help=True, help="For dispatchers: place on the map the addresses that came without coordinates."
)


# --- dispatchers --------------------------------------------------------------------------------


@roster.command("load")
def couriers_load(file: Path = typer.Argument(..., exists=True, help="A JSON list of couriers")) -> None:
    """Load or update the courier roster (the courier service's own collection)."""
    roster = [CourierProfile.model_validate(e) for e in json.loads(file.read_text())]

    async def save(db: Any) -> None:
        storage = CourierStorage(db)
        for profile in roster:
            await storage.save_courier(profile)

    run(with_database(save))
    console.print(f"{len(roster)} couriers loaded")


@roster.command("token")
def couriers_token(
    courier_id: str = typer.Argument(..., help="The courier's id, as in the roster"),
    issue: int = typer.Option(1, "--issue", min=1, max=MAX_ISSUE, help="Which of their tokens: 2 to rotate the first"),
) -> None:
    """The token of one courier: their app shows it to the courier gateway (GET /couriers/<id>/trips
    on the courier service), where it opens their own trips and nobody else's, and signs their
    reports with it (PHARMACY_COURIER_TOKEN for `pharmacy courier report`). Made with the service's
    PHARMACY_COURIER_GATEWAY_KEY (or the local dev stack's). To rotate one courier's token, issue
    the next (`--issue 2`), then revoke the old one on the courier service:
    PHARMACY_COURIER_KEY_FLOOR='{"C-ID": 2}'. Changing the key revokes every courier's token."""
    key = credentials.secret_of(settings_from_env().courier_gateway_key)
    if key is None:
        console.print("[red]PHARMACY_COURIER_GATEWAY_KEY is not set:[/] set it to the courier service's key")
        raise typer.Exit(2)
    print(courier_token(key, courier_id, issue))


def _gazetteer() -> Gazetteer:
    """The one consultation places addresses with: PHARMACY_GAZETTEER_FILE, else the bundled county's."""
    named = os.environ.get("PHARMACY_GAZETTEER_FILE")
    return Gazetteer.load(Path(named)) if named else Gazetteer.load()


@dispatch.command("locate")
def dispatch_locate(
    prescription_id: str,
    by: str = typer.Option(..., "--by", help="Your dispatcher id"),
    lat: float | None = typer.Option(None, "--lat", help="Latitude of the door"),
    lon: float | None = typer.Option(None, "--lon", help="Longitude of the door"),
    place: str | None = typer.Option(None, "--place", help="A gazetteer entry's id (`pharmacy dispatch places`)"),
) -> None:
    """Place a delivery whose address came without coordinates (it waits, listed by `pharmacy status`
    as "no map location"): by a point, or by a gazetteer entry. The courier service then offers it."""
    where = None
    if place is not None:
        found = _gazetteer().places.get(place.upper())
        if found is None:
            console.print(f"[red]no gazetteer entry {escape(place)}:[/] `pharmacy dispatch places` lists them")
            raise typer.Exit(2)
        lat, lon, where = found.latitude, found.longitude, f"{found.name} ({found.place_id})"
    if lat is None or lon is None:
        console.print("[red]where?[/] give --lat and --lon, or --place")
        raise typer.Exit(2)
    try:
        message = c.AddressLocated(
            correlation_id=prescription_id,
            producer="dispatcher-cli",
            prescription_id=prescription_id,
            coordinates=Coordinates(latitude=lat, longitude=lon),
            located_by=by,
            place=where,
        )
    except ValidationError as error:
        console.print(f"[red]not a place:[/] {escape(str(error.errors()[0]['msg']))}")
        raise typer.Exit(2) from None
    run(bus.publish(settings_from_env(), message))
    at = f"{lat:.5f}, {lon:.5f}" + (f" ({where})" if where else "")
    console.print(f"{escape(prescription_id)} placed at {escape(at)}; sent as {message.message_id}")


@dispatch.command("places")
def dispatch_places(
    name: str = typer.Argument("", help="Part of a name, in any script (empty: all)"),
    as_json: bool = typer.Option(False, "--json", help="The places as one JSON document"),
) -> None:
    """The county gazetteer's places: id, kind, names in Uyghur, Chinese and Latin, coordinates."""
    found = places_of(_gazetteer(), name)
    if as_json:
        print_json([asdict(place) for place in found])
        return
    console.print(places_table(found))


def places_of(gazetteer: Gazetteer, name: str = "") -> list[Place]:
    """The places one of whose names contains `name` (all for an empty one), as the file lists them."""
    wanted = normalised(name)
    return [p for p in gazetteer.places.values() if not wanted or any(wanted in normalised(n) for n in p.names)]


def places_table(places: list[Place]) -> Fitted:
    """The id a dispatcher types (`dispatch locate --place`) and the coordinates whole; the names,
    in three scripts, wrap between names."""
    table = listing("county gazetteer")
    table.add_column("id", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("where", no_wrap=True)
    table.add_column("names", overflow="fold")
    for place in places:
        names = " / ".join(escape(n) for n in dict.fromkeys(n for n in place.names if n))
        table.add_row(place.place_id, place.kind, f"{place.latitude:.4f}, {place.longitude:.4f}", names)
    return Fitted(table)


def _dev_stack_courier_gateway() -> str | None:
    try:
        from services.ops.devstack import DevStack
    except ImportError:
        return None
    return DevStack.from_env().http_urls().get("courier-1")


# --- couriers -----------------------------------------------------------------------------------


@courier.command()
def inbox(courier_id: str, from_beginning: bool = typer.Option(True, "--from-beginning/--new-only")) -> None:
    """Dispatches offered to one courier, and withdrawn from them, live. Report with `pharmacy courier report`."""

    async def feed() -> None:
        async for _, message, _ in bus.follow(
            settings_from_env(), topics.COURIER_DISPATCH, from_beginning=from_beginning, keys={courier_id}
        ):
            if isinstance(message, c.DispatchOffered):
                flags = " ".join(
                    f for f, on in (("COLD-CHAIN", message.cold_chain), ("CONTROLLED", message.controlled)) if on
                )
                deadline = f" accept by {message.accept_by:%Y-%m-%d %H:%M} UTC" if message.accept_by else ""
                console.print(
                    f"[bold]{message.dispatch_id}[/] package {message.package_id} (attempt {message.attempt}) "
                    f"pick up at {message.pickup_warehouse_id} → {message.address.line}, {message.address.town}"
                    f"{_where(message.address.coordinates)} {_phone(message.contact_phone)} {flags}{deadline}"
                )
            elif isinstance(message, c.DispatchWithdrawn):
                why = "not accepted in time" if message.reason == "acceptance_timeout" else "prescription cancelled"
                todo = (
                    "bring the goods back to the warehouse, then report 'returned'"
                    if message.return_goods
                    else "do not pick it up"
                )
                console.print(
                    f"[yellow]{message.dispatch_id} WITHDRAWN[/] package {message.package_id} ({why}): {todo}"
                )

    run(feed())


@courier.command("jobs")
@courier.command()
def trips(
    courier_id: str,
    gateway: str | None = typer.Option(
        None,
        envvar="COURIER_GATEWAY_URL",
        help="The courier service's address, e.g. https://couriers.example (default: the local dev stack's)",
    ),
    token: str = typer.Option(..., envvar="COURIER_TOKEN", help="Your token (`pharmacy couriers token`)"),
    as_json: bool = typer.Option(False, "--json", help="The gateway's answer as it came, one JSON document"),
) -> None:
    """Your open jobs (`jobs` and `trips` are the same command), from the courier gateway: only what is
    offered to you or in your hands, each with where to pick it up, the door as a geo: URI and a map
    link, the contact phone and how to handle it. No delivery code: the patient gives it at the door."""
    gateway = gateway or _dev_stack_courier_gateway()
    if gateway is None:
        console.print("[red]no gateway:[/] give --gateway (or COURIER_GATEWAY_URL), or start the dev stack")
        raise typer.Exit(2)
    request = urllib.request.Request(
        f"{gateway.rstrip('/')}/couriers/{urllib.parse.quote(courier_id)}/trips",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        reason = "the token is not this courier's" if error.code == 401 else f"HTTP {error.code}"
        console.print(f"[red]the gateway refused:[/] {reason}")
        raise typer.Exit(1) from None
    except (urllib.error.URLError, TimeoutError) as error:
        console.print(f"[red]the gateway did not answer:[/] {getattr(error, 'reason', error)}")
        raise typer.Exit(1) from None
    if as_json:
        print_json(answer)
        return
    if not answer["trips"]:
        console.print("no open trips")
    for trip in answer["trips"]:
        flags = " ".join(f for f, on in (("COLD-CHAIN", trip["cold_chain"]), ("CONTROLLED", trip["controlled"])) if on)
        deadline = f" accept by {trip['accept_by']}" if trip["accept_by"] and trip["state"] == "offered" else ""
        address = trip["address"]
        located = Coordinates.model_validate(address["coordinates"]) if address.get("coordinates") else None
        console.print(
            f"[bold]{trip['dispatch_id']}[/] {trip['state']}: pick up at {trip['pickup_warehouse_id']} → "
            f"{address['line']}, {address['town']}{_where(located)} {_phone(trip['contact_phone'])} {flags}{deadline}"
        )


def _where(coordinates: Coordinates | None) -> str:
    """Where the door is, as a geo: URI a phone's map opens, and a map link for any browser."""
    if coordinates is None:
        return " (no map pin: find it by the address)"
    lat, lon = f"{coordinates.latitude:.5f}", f"{coordinates.longitude:.5f}"
    return f" geo:{lat},{lon} https://www.openstreetmap.org/?mlat={lat}&mlon={lon}#map=16/{lat}/{lon}"


def _phone(phone: str | None) -> str:
    """The number as a tel: URI, in one piece (no spaces a narrow terminal could split it at), which
    a phone dials when tapped."""
    if not phone:
        return "☎ none given"
    return "☎ tel:" + "".join(ch for ch in phone if ch.isdigit() or ch == "+")


@courier.command()
def report(
    dispatch_id: str,
    status: str = typer.Argument(..., help="accepted | picked_up | delivered | failed | returned"),
    courier_id: str = typer.Option(..., "--courier", help="Your courier id"),
    package_id: str = typer.Option(..., "--package", help="The package id from the dispatch"),
    code: str | None = typer.Option(
        None, help="For delivered: the six-digit code the patient reads out; without the right one it does not count"
    ),
    reason: str | None = typer.Option(
        None, help="For failed: patient_absent | address_not_found | refused | damaged | other"
    ),
    note: str | None = typer.Option(None),
    wait: float | None = typer.Option(
        None, help="Seconds to wait for the courier service's answer (default PHARMACY_ANSWER_WAIT_S, 10)"
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help="Send and do not wait for the answer (scripts)"),
) -> None:
    """Report on a dispatch: accepted, picked up, delivered (with the patient's code), failed with a
    reason, or returned (the goods of a withdrawn dispatch are back at the warehouse). Signed with
    your token (PHARMACY_COURIER_TOKEN); prints the courier service's answer: applied, or refused
    and why (a wrong code: ask the patient again)."""
    try:
        update = c.CourierReported.model_validate(
            {
                "correlation_id": package_id,
                "producer": f"courier-{courier_id}",
                "dispatch_id": dispatch_id,
                "courier_id": courier_id,
                "package_id": package_id,
                "status": status,
                "failure_reason": reason,
                "delivery_code": code,
                "note": note,
            }
        )
    except ValidationError as error:
        console.print(f"[red]not a valid report:[/] {error}")
        raise typer.Exit(2) from None
    settings = settings_from_env()
    waiting = settings.answer_wait_s if wait is None else wait
    if no_wait or waiting <= 0:
        run(bus.publish(settings, update))
        console.print(f"reported {status} on {dispatch_id}")
        return
    answer = run(bus.ask(settings, update, topics.COURIER_ANSWERS, courier_id, waiting))
    say_answer(answer, waited_s=waiting, what=f"{status} on {dispatch_id}")
