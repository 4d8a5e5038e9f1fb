"""Topic setup against the dev broker: the stack's topics were created with their configs, a run
again finds each as asked, and one whose config is not as the settings ask fails the setup."""

from __future__ import annotations

import pytest

from pharmacy_contracts.topics import ALL_TOPICS
from services.runtime.settings import RuntimeSettings
from services.runtime.topic_setup import TopicSetupError, create_topics


async def test_the_stacks_topics_are_as_the_settings_ask_and_setting_them_up_again_changes_nothing(
    settings: RuntimeSettings,
) -> None:
    assert await create_topics(settings) == []


async def test_topics_whose_configs_differ_from_the_settings_fail_the_setup(settings: RuntimeSettings) -> None:
    stricter = settings.model_copy(update={"kafka_dead_letter_retention_ms": 1_000})
    with pytest.raises(TopicSetupError) as raised:
        await create_topics(stricter)
    said = str(raised.value)
    assert all(f"{t.dead_letter_topic}: retention.ms is" in said for t in ALL_TOPICS)
    assert not any(f"{t.name}: " in said for t in ALL_TOPICS), "only the dead-letter topics differ"
