"""Every sentence a patient may read exists in every language: the template (.pot) holds exactly the
sentences the code marks, each catalog (.po) translates every one of them (not empty, not fuzzy, the
same placeholders), and every kind of notification, with every reason and window, renders in each
language into a message the contract accepts."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from datetime import UTC, datetime
from typing import Any, get_args

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po

from pharmacy_contracts.patient import EXPECTING_DELIVERY, NotificationKind, NotificationReason, PatientNotified
from services.consultation import wording
from services.consultation.wording import LANGUAGES, LOCALE_DIR, Wording

POT = LOCALE_DIR / "notifications.pot"
RX = "RX-2026-000123"
CODE = "493017"
PLACEHOLDER = re.compile(r"%\((\w+)\)s")
REFUSALS = ("expired", "needs_correction", "not_safe", "too_soon", "pharmacist_declined", "review_expired")
FAILURES = ("patient_absent", "address_not_found", "refused_at_door", "damaged", "other")
#: 14:00 to 16:00 Beijing time on one day, and into the next morning.
SAME_DAY = (datetime(2026, 11, 25, 6, 0, tzinfo=UTC), datetime(2026, 11, 25, 8, 0, tzinfo=UTC))
NEXT_DAY = (datetime(2026, 11, 25, 6, 0, tzinfo=UTC), datetime(2026, 11, 26, 3, 0, tzinfo=UTC))


def read(path: Any, language: str | None = None) -> Catalog:
    with path.open("rb") as po:
        return read_po(po, locale=wording.BABEL_LOCALES[language] if language else None, domain=wording.DOMAIN)


def catalog_path(language: str) -> Any:
    return LOCALE_DIR / language / "LC_MESSAGES" / f"{wording.DOMAIN}.po"


def test_the_template_holds_exactly_the_sentences_the_code_marks():
    marked = {message for _, message, _, _ in extract_from_file("python", wording.__file__, keywords={"N_": None})}
    assert marked, "the extractor found the N_ calls"
    assert {m.id for m in read(POT) if m.id} == marked, "run the pybabel extract and update of wording.py's docstring"


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_sentence_is_translated_in_every_language(language: str):
    template = {m.id for m in read(POT) if m.id}
    catalog = read(catalog_path(language), language)
    assert str(catalog.locale).startswith(language)
    assert {m.id for m in catalog if m.id} == template, "every sentence of the template, and no other"
    assert not catalog.obsolete
    for message in catalog:
        if not message.id:
            continue
        assert isinstance(message.id, str) and isinstance(message.string, str)
        assert message.string.strip(), f"untranslated: {message.id!r}"
        assert not message.fuzzy, f"fuzzy: {message.id!r}"
        wanted = Counter(PLACEHOLDER.findall(message.id))
        assert Counter(PLACEHOLDER.findall(message.string)) == wanted, f"placeholders differ: {message.id!r}"
        assert ("python-format" in message.flags) == bool(wanted), message.id
    assert [(m.id, errors) for m, errors in catalog.check()] == []


def texts(language: str, wording_: Wording | None = None) -> list[tuple[str, str | None, Any, str]]:
    """(kind, reason, window, text) for every kind, every reason it can have, and every window."""
    say = wording_ or Wording()
    found = []
    for kind in get_args(NotificationKind):
        reasons: tuple[Any, ...] = (
            REFUSALS if kind == "refused" else FAILURES if kind in ("failed_attempt", "undeliverable") else (None,)
        )
        windows = (None, SAME_DAY, NEXT_DAY) if kind in EXPECTING_DELIVERY else (None,)
        for reason in reasons:
            for window in windows:
                code = CODE if kind == "out_for_delivery" else None
                text = say.text(kind, language, prescription_id=RX, reason=reason, delivery_code=code, expected=window)  # type: ignore[arg-type]
                found.append((kind, reason, window, text))
    return found


def test_every_reason_has_its_sentence():
    assert set(REFUSALS) | set(FAILURES) == set(get_args(NotificationReason)) == set(wording.REASONS)
    assert set(wording.OPENING) == set(get_args(NotificationKind))


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_kind_of_notification_renders_in_each_language(language: str):
    rendered = texts(language)
    assert len(rendered) == len({text for *_, text in rendered}), "each case reads differently"
    for kind, reason, window, text in rendered:
        assert "%(" not in text and RX in text, text
        assert (CODE in text) == (kind == "out_for_delivery"), text
        assert ("14:00" in text) == (window is not None), text
        # What the gateway receives validates against the contract.
        PatientNotified(
            correlation_id=RX,
            producer="consultation",
            prescription_id=RX,
            phone="+86 138 0000 0000",
            language=language,  # type: ignore[arg-type]
            kind=kind,  # type: ignore[arg-type]
            text=text,
            reason=reason,  # type: ignore[arg-type]
            delivery_code=CODE if kind == "out_for_delivery" else None,
            will_retry={"failed_attempt": True, "undeliverable": False}.get(kind),
            expected_from=window[0] if window else None,
            expected_by=window[1] if window else None,
        )
        if language != "en":
            assert not re.search("[A-Za-z]", text.replace(RX, "")), f"Latin letters in {language}: {text}"


def _first_strong_direction(text: str) -> str:
    return next(unicodedata.bidirectional(ch) for ch in text if unicodedata.bidirectional(ch) in ("L", "R", "AL"))


def test_uyghur_messages_start_right_to_left_whatever_comes_first():
    """A phone lays a message out by its first strong character: a Uyghur text starting with the
    prescription id would be laid out left to right, its sentences in the wrong order."""
    for *_, text in texts("ug"):
        assert _first_strong_direction(text) == "AL", text


def test_times_are_told_on_the_patients_clock_in_their_locale():
    [beijing] = [t for k, _, w, t in texts("en") if k == "out_for_delivery" and w == SAME_DAY]
    assert beijing.endswith("It should arrive on 25 Nov between 14:00 and 16:00 (Beijing time).")
    [across] = [t for k, r, w, t in texts("en") if k == "failed_attempt" and r == "other" and w == NEXT_DAY]
    assert across.endswith("We will try again between 25 Nov, 14:00 and 26 Nov, 11:00 (Beijing time).")
    [chinese] = [t for k, _, w, t in texts("zh") if k == "out_for_delivery" and w == SAME_DAY]
    assert chinese.endswith("预计11月25日14:00至16:00送到（北京时间）。")
    [uyghur] = [t for k, _, w, t in texts("ug", Wording("Asia/Urumqi")) if k == "accepted" and w == SAME_DAY]
    assert "25-نويابىر كۈنى سائەت 12:00 – 14:00" in uyghur and uyghur.endswith("(شىنجاڭ ۋاقتى).")


def test_the_same_notification_reads_the_same_every_time():
    assert texts("ug") == texts("ug")


def test_the_published_example_reads_as_the_service_words_it():
    example = PatientNotified.model_validate(PatientNotified.model_json_schema()["examples"][0])
    assert example.text == Wording().text(
        example.kind, example.language, prescription_id=example.prescription_id, delivery_code=example.delivery_code
    )
