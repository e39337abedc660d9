"""A few hand-written stories for the emotion tests (the fixtures are in tests/conftest.py)."""

from moia.directions.stories import NEUTRAL, Story

STORIES = [
    Story("joy", "She laughed and spun around the kitchen, waving the letter over her head."),
    Story("joy", "The children cheered when the boat finally reached the island."),
    Story("joy", "He grinned all through dinner and hugged everyone twice."),
    Story("anger", "He slammed the door so hard the frame cracked and the glass shook."),
    Story("anger", "She tore the ticket in half and shouted at the empty street."),
    Story("fear", "Something moved in the dark hallway and she held her breath, not daring to move."),
    Story("fear", "His hands shook as the plane dropped and the lights flickered."),
    Story(NEUTRAL, "The library opens at nine and closes at five on weekdays."),
    Story(NEUTRAL, "The train leaves from platform four every twenty minutes."),
    Story(NEUTRAL, "The table is made of oak and has a drawer at each end."),
    Story(NEUTRAL, "Add two cups of flour and a pinch of salt, then stir."),
]
