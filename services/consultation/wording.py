r"""What a patient reads, in their language: gettext catalogs read with Babel, dates and times formatted
by Babel for the patient's locale.

The English sentences below are the message ids. Each notification is a few of them, whole sentences
joined: a kind's opening sentence, then its reason, then what happens next. Translators translate
sentences, never fragments, so word order and suffixes stay theirs.

The catalogs are `locale/<language>/LC_MESSAGES/notifications.po`, read as they are when the service
starts (Babel's `read_po`, compiled in memory with `write_mo`): no compile step and no `.mo` files
to forget. After changing a sentence here (an `N_` call), extract it and merge it into each catalog
with Babel's command line:

    .venv/bin/pybabel extract --no-location --no-wrap -k N_ --project=pharmacy-fulfillment --version=0.1.0 \
        -o services/consultation/locale/notifications.pot services/consultation/wording.py
    .venv/bin/pybabel update --no-location --no-wrap --no-fuzzy-matching -D notifications \
        -i services/consultation/locale/notifications.pot -d services/consultation/locale

then translate what came new in each `.po`: tests/unit/test_notification_wording.py fails until every
sentence is translated in every language, with the same placeholders, and none is fuzzy.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from babel import Locale
from babel.dates import format_skeleton, get_timezone, get_timezone_name
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from pharmacy_contracts.consultation import PatientLanguage
from pharmacy_contracts.patient import NotificationKind, NotificationReason

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "notifications"
LANGUAGES: tuple[PatientLanguage, ...] = ("ug", "zh", "en")
#: The Babel locale each language's dates are formatted in: Uyghur (China), simplified Chinese (China),
#: and British English (day before month, the 24-hour clock, as the county writes them).
BABEL_LOCALES: Mapping[PatientLanguage, str] = {"ug": "ug_CN", "zh": "zh_Hans_CN", "en": "en_GB"}
#: Between two sentences: Chinese full stops need no space.
SENTENCE_GAP: Mapping[PatientLanguage, str] = {"ug": " ", "zh": "", "en": " "}


def N_(message: str) -> str:
    """Marks a message id for extraction (pybabel -k N_); translated when a text is put together."""
    return message


OPENING: Mapping[NotificationKind, str] = {
    "accepted": N_(
        "We received your prescription %(rx)s. We will send you a message when your medicine is on the way."
    ),
    "held_for_pharmacist": N_(
        "A pharmacist must check your prescription %(rx)s before we send your medicine. "
        "This may take a few hours. You do not need to do anything."
    ),
    "out_for_delivery": N_(
        "Your medicine for prescription %(rx)s is on the way. When the courier comes, tell them this code: "
        "%(code)s. Do not give this code to anyone else."
    ),
    "failed_attempt": N_("We could not deliver your medicine for prescription %(rx)s."),
    "delivered": N_("Your medicine for prescription %(rx)s was delivered. Thank you."),
    "cancelled": N_(
        "Your prescription %(rx)s was cancelled. We will not send the medicine. If you have questions, ask your doctor."
    ),
    "refused": N_("We cannot give you the medicine for prescription %(rx)s."),
    "out_of_stock": N_(
        "We do not have all the medicine for your prescription %(rx)s now. Your hospital will call you."
    ),
    "undeliverable": N_("We could not deliver your medicine for prescription %(rx)s."),
    "recalled": N_(
        "Medicine we delivered to you for prescription %(rx)s has been recalled because it may not be safe. "
        "Do not take it, and keep it to give back. Your hospital will call you about a replacement."
    ),
}

REASONS: Mapping[NotificationReason, str] = {
    # why a prescription was refused: what a patient can act on, never a drug, a diagnosis or a code
    "expired": N_("The prescription has expired."),
    "needs_correction": N_("The prescription is not complete or not correct."),
    "not_safe": N_("The checks found that the medicine may not be safe for you."),
    "too_soon": N_("You received this medicine recently. It is too early for more."),
    "pharmacist_declined": N_("A pharmacist checked it and did not approve it."),
    "review_expired": N_("A pharmacist could not check it in time."),
    # why a delivery attempt failed
    "patient_absent": N_("Nobody was at home."),
    "address_not_found": N_("The courier could not find your address."),
    "refused_at_door": N_("The medicine was refused at the door."),
    "damaged": N_("The package was damaged on the way."),
    "other": N_("Something went wrong on the way."),
}

CONTACT_DOCTOR = N_("Please contact your doctor.")
RETRY_SOON = N_("We will try again soon.")
NO_RETRY = N_("We will not try again. Your hospital will call you.")
#: An expected window within one day, and one across days (each end then has its date).
ARRIVES_ON_DAY = N_("It should arrive on %(day)s between %(start)s and %(end)s (%(zone)s).")
ARRIVES_BETWEEN = N_("It should arrive between %(start)s and %(end)s (%(zone)s).")
RETRY_ON_DAY = N_("We will try again on %(day)s between %(start)s and %(end)s (%(zone)s).")
RETRY_BETWEEN = N_("We will try again between %(start)s and %(end)s (%(zone)s).")
#: The clock a time is on, said with it: Xinjiang keeps two (Beijing time, and Xinjiang time two hours
#: behind, which many Uyghur speakers live by), so a bare "14:00" can mean two moments.
ZONES: Mapping[str, str] = {"Asia/Shanghai": N_("Beijing time"), "Asia/Urumqi": N_("Xinjiang time")}


@functools.cache
def translations(language: PatientLanguage) -> Translations:
    """The language's catalog, read from its .po and compiled in memory (fuzzy entries left out)."""
    path = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as po:
        catalog = read_po(po, locale=BABEL_LOCALES[language], domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return Translations(compiled, domain=DOMAIN)


class Wording:
    """Puts a notification's text together in the patient's language, times in `timezone`."""

    def __init__(self, timezone: str = "Asia/Shanghai") -> None:
        self._timezone_name = timezone
        self._timezone = get_timezone(timezone)
        for language in LANGUAGES:  # a catalog that cannot be read stops the service at its start
            translations(language)

    def text(
        self,
        kind: NotificationKind,
        language: PatientLanguage,
        *,
        prescription_id: str,
        reason: NotificationReason | None = None,
        delivery_code: str | None = None,
        expected: tuple[datetime, datetime] | None = None,
    ) -> str:
        sentences = [self._say(language, OPENING[kind], rx=prescription_id, code=delivery_code or "")]
        if kind in ("refused", "failed_attempt", "undeliverable"):
            sentences.append(self._say(language, REASONS[reason or "other"]))
        if kind == "refused":
            sentences.append(self._say(language, CONTACT_DOCTOR))
        elif kind == "failed_attempt":
            if expected is None:
                sentences.append(self._say(language, RETRY_SOON))
            else:
                sentences.append(self._window(language, expected, RETRY_ON_DAY, RETRY_BETWEEN))
        elif kind == "undeliverable":
            sentences.append(self._say(language, NO_RETRY))
        elif expected is not None and kind in ("accepted", "out_for_delivery"):
            sentences.append(self._window(language, expected, ARRIVES_ON_DAY, ARRIVES_BETWEEN))
        return SENTENCE_GAP[language].join(sentences)

    def _say(self, language: PatientLanguage, message: str, **values: str) -> str:
        translated = translations(language).gettext(message)
        return translated % values if values else translated

    def _window(self, language: PatientLanguage, window: tuple[datetime, datetime], on_day: str, between: str) -> str:
        locale = Locale.parse(BABEL_LOCALES[language])
        start, end = (moment.astimezone(self._timezone) for moment in window)
        zone = self._zone(language, locale, start)

        def day(moment: datetime) -> str:
            return format_skeleton("MMMd", moment, tzinfo=self._timezone, locale=locale)

        def clock(moment: datetime) -> str:
            return format_skeleton("Hm", moment, tzinfo=self._timezone, locale=locale)

        if start.date() == end.date():
            return self._say(language, on_day, day=day(start), start=clock(start), end=clock(end), zone=zone)
        # The locale's own way of putting a date and a time together ("{1}, {0}": date, then time).
        pattern = str(locale.datetime_formats["short"])

        def moment_of(moment: datetime) -> str:
            return pattern.replace("{1}", day(moment)).replace("{0}", clock(moment))

        return self._say(language, between, start=moment_of(start), end=moment_of(end), zone=zone)

    def _zone(self, language: PatientLanguage, locale: Locale, moment: datetime) -> str:
        if self._timezone_name in ZONES:
            return self._say(language, ZONES[self._timezone_name])
        return get_timezone_name(moment, width="long", locale=locale)
