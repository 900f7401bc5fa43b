"""The main job: the whole method on a bundled model, offline: data, train-align, train-task, merge, eval,
probe and a report (`run`); `plan` holds its settings, `report` turns results into report.md.

May import: every library part (data, models, hub, evaluate, merge, train). Never `cli`.
"""
