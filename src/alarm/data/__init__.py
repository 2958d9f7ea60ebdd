"""Packaged data: quickstart.jsonl, the hand-written offline QA set (see alarm.data.qa)."""
