"""Evaluation: COCO-style detection metrics and COCO import/export."""
