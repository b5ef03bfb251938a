"""Quantitative checks of saliency maps: deletion / insertion (:mod:`.faithfulness`), ROAD (:mod:`.road`),
pointing game and energy in mask (:mod:`.localisation`)."""
