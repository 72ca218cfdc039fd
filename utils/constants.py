"""Modality ids carried by every batch in its ``modality`` tensor."""

VISIBLE = 0
INFRARED = 1
