"""The chat template: messages as a play's script, which a base model trained on text continues.

Our models are base models (no instruction tuning, no special chat tokens), so a conversation is
given to them as plain text they may have seen the like of, one line per turn with the speaker's
name, ending on the assistant's name for the model to go on from::

    System: You are a helpful assistant.
    User: Hello!
    Assistant: Hi there.
    User: Who are you?
    Assistant:

The reply is what the model writes after the last ``Assistant:``, up to the next ``User:`` turn it
starts to invent (``STOPS``, cut from the reply as any stop string is). docs/serve.md shows it.
"""

from __future__ import annotations

# each role as the template names it; "developer" is OpenAI's newer name for the system message
ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
STOPS = ("\nUser:",)


def render(messages: list[tuple[str, str]]) -> str:
    """(role, text) pairs -> the prompt the model continues."""
    return "".join(f"{ROLES[role]}: {text}\n" for role, text in messages) + "Assistant:"
