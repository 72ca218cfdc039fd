"""Modality ids and camera conventions shared by data, model and evaluation."""

# Modality ids carried by every batch in its ``modality`` tensor.
VISIBLE = 0
INFRARED = 1
MODALITY_NAMES = {VISIBLE: "visible", INFRARED: "infrared"}

# RegDB has one camera per modality. Convention used here (the AGW family's):
# visible = camera 2, thermal = camera 1. The choice never changes RegDB results
# because its protocol applies no camera rule.
REGDB_VISIBLE_CAM = 2
REGDB_THERMAL_CAM = 1

# SYSU-MM01 cameras: 1, 2 (indoor), 4, 5 (outdoor) are RGB; 3 (indoor) and 6 are IR.
SYSU_RGB_CAMS = (1, 2, 4, 5)
SYSU_INDOOR_RGB_CAMS = (1, 2)
SYSU_IR_CAMS = (3, 6)
